"""A typed, synchronous client of the agent HTTP API (requests), for the CLI and the k8s sidecar.

It speaks the wire format of `appliance.api.app` and hands back model values. Failures become two
exceptions whose messages say what to do next: `ApiError` (the agent answered with an error) and
`ApiUnreachable` (no answer at all). It imports only the base of the appliance (the model, its
error class), so `k8s_sync` may use it, and it knows nothing of click or the command line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import requests
from pydantic import TypeAdapter, ValidationError

from appliance.apierror import ApiError
from appliance.bodies import (
    ApplyAnswer,
    ApplyBody,
    ServiceHealth,
    ServiceWithHealth,
    Status,
    VipEntry,
)
from appliance.model import (
    Allocation,
    AllocationRequest,
    NodeInfo,
    Pool,
    Service,
    ServiceSpec,
    field_errors,
)
from appliance.secretfile import SecretError, read_secret

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0


class ApiUnreachable(Exception):  # noqa: N818  (the name callers know it by)
    """No HTTP answer: connection refused, name not found, TLS failure or timeout."""

    def __init__(self, url: str, reason: str, hint: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}; {hint}")
        self.url = url
        self.reason = reason
        self.hint = hint


class ClientConfigError(ValueError):
    """The client cannot be built: a bad API URL, a missing or empty token file."""


def read_token(path: Path) -> str:
    """The bearer token of a token file (see `read_secret`), or ClientConfigError saying why not."""
    try:
        return read_secret(path)
    except SecretError as exc:
        raise ClientConfigError(f"token file {exc}") from None


def client_from(
    api: str,
    token_file: Path,
    timeout: float = DEFAULT_TIMEOUT,
    verify: bool | str = True,
) -> ApiClient:
    """Build a client from an API URL and the path of the token file."""
    return ApiClient(api, read_token(token_file), timeout=timeout, verify=verify)


def service_path(service_id: str) -> str:
    """The URL path of a service or allocation owner id, whose "/" stay path separators.

    Segments "." and ".." are escaped too: HTTP clients would otherwise resolve them away and
    address another object.
    """
    segments = []
    for segment in service_id.split("/"):
        if segment in (".", ".."):
            segments.append(segment.replace(".", "%2E"))
        else:
            segments.append(quote(segment, safe=""))
    return "/".join(segments)


_POOLS = TypeAdapter(list[Pool])
_SERVICES = TypeAdapter(list[Service])
_NODES = TypeAdapter(list[NodeInfo])
_ALLOCATIONS = TypeAdapter(list[Allocation])
_VIPS = TypeAdapter(list[VipEntry])


class ApiClient:
    """One agent's API at `base_url`, with a bearer token. Use as a context manager or close()."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        session: requests.Session | None = None,
    ) -> None:
        try:
            parts = urlsplit(base_url)
            self.port = parts.port  # parsed now: "[::1" or ":99999" fail here, not mid-request
        except ValueError as exc:
            raise ClientConfigError(f"API URL {base_url!r} is not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientConfigError(
                f"API URL {base_url!r} is not an http:// or https:// URL with a host"
            )
        if parts.path.rstrip("/").endswith("/v1"):  # a path prefix (a proxy) stays allowed
            raise ClientConfigError(
                f"API URL {base_url!r} ends in /v1: give the agent's base URL, e.g. "
                f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')[:-3]}"
            )
        if parts.query or parts.fragment:
            raise ClientConfigError(f"API URL {base_url!r}: no query or fragment, please")
        if not 0 < timeout < float("inf"):
            raise ClientConfigError(f"timeout {timeout!r}: give a number of seconds above 0")
        if isinstance(verify, str) and not Path(verify).is_file():
            raise ClientConfigError(f"CA file {verify} does not exist or is not a file")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.verify = verify
        self.session.headers["Accept"] = "application/json"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------------------------

    def healthz(self) -> dict[str, Any]:
        """Liveness of the agent (needs no token)."""
        return _object(self._request("GET", "/healthz"))

    def status(self) -> Status:
        """The agent's view of the cluster: Raft role, leader, term, members and counts."""
        return _parse(Status, self._request("GET", "/v1/status"))

    def nodes(self) -> list[NodeInfo]:
        return _parse(_NODES, self._request("GET", "/v1/nodes"))

    def set_drain(self, node: str, drained: bool) -> dict[str, Any]:
        """Drain a node (its VIPs move away, break-before-make) or undrain it."""
        verb = "drain" if drained else "undrain"
        data: dict[str, Any] = self._request("POST", f"/v1/nodes/{quote(node, safe='')}/{verb}")
        return data

    def pools(self) -> list[Pool]:
        return _parse(_POOLS, self._request("GET", "/v1/pools"))

    def pool(self, name: str) -> Pool:
        return _parse(Pool, self._request("GET", f"/v1/pools/{quote(name, safe='')}"))

    def services(self) -> list[Service]:
        return _parse(_SERVICES, self._request("GET", "/v1/services"))

    def each_service(self, where: Callable[[str], bool] | None = None) -> Iterator[Service]:
        """The services whose id `where` accepts (all without it), parsed one at a time: a
        caller that keeps a little of each does not hold thousands of models at once, and
        the ones not asked for are not validated at all."""
        data = self._request("GET", "/v1/services")
        if not isinstance(data, list):
            raise _bad_response("expected a list of services")
        for item in data:
            if where is None or not _is_service_of(item) or where(item["spec"]["id"]):
                yield _parse(Service, item)

    def service(self, service_id: str) -> Service:
        return self.service_with_health(service_id)[0]

    def service_with_health(self, service_id: str) -> tuple[Service, ServiceHealth | None]:
        """The service, and the answering node's view of its backends' health (if it checks)."""
        data = self._request("GET", f"/v1/services/{service_path(service_id)}")
        answer = _parse(ServiceWithHealth, data)
        service = Service(spec=answer.spec, address=answer.address, backend_ids=answer.backend_ids)
        return service, answer.health

    def allocations(self) -> list[Allocation]:
        return _parse(_ALLOCATIONS, self._request("GET", "/v1/allocations"))

    def vips(self) -> list[VipEntry]:
        """One entry per allocated address: pool, announce mode, owners, services, ports."""
        return _parse(_VIPS, self._request("GET", "/v1/vips"))

    def openapi(self) -> dict[str, Any]:
        return _object(self._request("GET", "/v1/openapi.json"))

    def metrics_text(self) -> str:
        """The Prometheus exposition text of the agent."""
        response = self._send("GET", "/metrics", None)
        return response.text

    # -- writes --------------------------------------------------------------------------------

    def put_pool(self, pool: Pool) -> Pool:
        """Create or replace a pool."""
        path = f"/v1/pools/{quote(pool.name, safe='')}"
        return _parse(Pool, self._request("PUT", path, pool.model_dump(mode="json")))

    def delete_pool(self, name: str) -> None:
        """Delete a pool that no allocation uses."""
        self._request("DELETE", f"/v1/pools/{quote(name, safe='')}")

    def put_service(self, spec: ServiceSpec) -> Service:
        """Create or replace a service; the answer carries the address it was given."""
        path = f"/v1/services/{service_path(spec.id)}"
        return _parse(Service, self._request("PUT", path, spec.model_dump(mode="json")))

    def delete_service(self, service_id: str) -> None:
        """Delete a service and release its address."""
        self._request("DELETE", f"/v1/services/{service_path(service_id)}")

    def allocate(self, request: AllocationRequest) -> Allocation:
        """Allocate an address for `request.owner` (asking again returns the same one)."""
        data = self._request("POST", "/v1/allocations", request.model_dump(mode="json"))
        return _parse(Allocation, data)

    def release(self, owner: str) -> None:
        """Release the allocation of `owner`."""
        self._request("DELETE", f"/v1/allocations/{service_path(owner)}")

    def apply(
        self,
        pools: Sequence[Pool] = (),
        services: Sequence[ServiceSpec] = (),
        delete_services: Sequence[str] = (),
    ) -> ApplyAnswer:
        """Put pools, then services, then delete services, all or nothing in one Raft commit.

        The answer has one result per change in that order: the pool, the service (with its
        address) or the deletion (and whether the service still existed).
        """
        body = ApplyBody(
            pools=list(pools), services=list(services), delete_services=list(delete_services)
        )
        return _parse(ApplyAnswer, self._request("POST", "/v1/apply", body.model_dump(mode="json")))

    # -- transport -----------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        response = self._send(method, path, body)
        try:
            return response.json()
        except ValueError:
            raise _bad_response(f"{method} {path}: the answer is not JSON") from None

    def _send(self, method: str, path: str, body: Any) -> requests.Response:
        url = self.base_url + path
        try:
            response = self.session.request(
                method,
                url,
                data=None if body is None else json.dumps(body),
                headers={"Content-Type": "application/json"} if body is not None else None,
                timeout=self.timeout,
                # Per request: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a
                # session-level `verify`, which would ignore the CA the caller asked for.
                verify=self.session.verify,
            )
        except requests.exceptions.SSLError as exc:
            raise ApiUnreachable(
                self.base_url,
                f"TLS failed ({_tls_reason(exc)})",
                "check the agent's certificate and the CA bundle this client trusts",
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise ApiUnreachable(
                self.base_url,
                f"no connection within {self.timeout:g}s",
                "is the host up, and is a firewall dropping the port?",
            ) from None
        except requests.exceptions.Timeout:
            raise ApiUnreachable(
                self.base_url,
                f"no answer within {self.timeout:g}s",
                "is the agent overloaded? a change sent may still be applied; retrying is safe",
            ) from None
        except requests.exceptions.ConnectionError as exc:
            reason = _connection_reason(exc)
            hint = "is the agent running at that URL?"
            if reason == _CLOSED and url.startswith("http://"):
                # An agent with api.tls closes a plain-HTTP connection without a word.
                hint = "does the agent use TLS (api.tls)? then use https:// in --api"
            raise ApiUnreachable(self.base_url, reason, hint) from None
        except requests.exceptions.RequestException as exc:
            raise ApiUnreachable(
                self.base_url, str(exc) or type(exc).__name__, "is that URL a raftlb agent?"
            ) from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response


def _is_service_of(data: Any) -> bool:
    """The shape `where` can look at; anything else is parsed (and refused) as it is."""
    spec = data.get("spec") if isinstance(data, dict) else None
    return isinstance(spec, dict) and isinstance(spec.get("id"), str)


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _bad_response("expected a JSON object")
    return data


def _parse(model: type[T] | TypeAdapter[T], data: Any) -> T:
    adapter = model if isinstance(model, TypeAdapter) else TypeAdapter(model)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        first = field_errors(exc)[0]
        raise _bad_response(f"{first['field']}: {first['message']}") from None


def _bad_response(what: str) -> ApiError:
    return ApiError(
        0,
        "bad_response",
        f"unexpected answer from the agent ({what}); is the API URL a raftlb agent of this "
        "version?",
    )


def _error_from(response: requests.Response) -> ApiError:
    retry_after = _retry_after(response.headers.get("Retry-After"))
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        fields = error.get("fields") or []
    except (ValueError, KeyError, TypeError):
        text = " ".join(response.text.split())[:200] or response.reason
        return ApiError(
            response.status_code,
            "http_error",
            f"HTTP {response.status_code} from {response.url}: {text}",
            None,
            retry_after,
        )
    if not isinstance(fields, list):
        fields = []
    return ApiError(response.status_code, code, message, fields, retry_after)


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_SSL_REASON = re.compile(r"\[SSL[^\]]*\]\s*([^'\")]+)")


def _tls_reason(exc: requests.exceptions.SSLError) -> str:
    match = _SSL_REASON.search(str(exc))
    return match[1].strip() if match else str(exc)


def _connection_reason(exc: requests.exceptions.ConnectionError) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if (
        "name or service not known" in text
        or "nodename nor servname" in text
        or ("name resolution" in text)
    ):
        return "the host name does not resolve"
    if "no route to host" in text or "network is unreachable" in text:
        return "no route to the host"
    if "reset" in text or "remotedisconnected" in text or "aborted" in text:
        return _CLOSED
    return str(exc)


_CLOSED = "the connection was closed without an answer"
