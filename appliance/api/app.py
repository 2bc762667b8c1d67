"""The agent's HTTP API (aiohttp): JSON under /v1/, bearer-token auth, Prometheus /metrics.

Every agent serves it; reads come from the local replica, writes become Raft commands that
pysyncobj forwards to the leader. A write fails with 503 within the configured write timeout
when there is no quorum. Bodies are parsed once into model values; a bad body gets 400 (not
JSON) or 422 with one entry per bad field, and changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, TypeAdapter, ValidationError

from appliance.api.guard import ConnectionGuard
from appliance.api.openapi import openapi_document
from appliance.api.views import VipsCache, nodes_view, status_view
from appliance.apierror import ApiError
from appliance.bodies import ApplyBody, ServiceHealth, ServiceWithHealth
from appliance.limits import APPLY_MAX_BYTES, APPLY_MAX_ITEMS, BODY_MAX_BYTES, BODY_SECONDS
from appliance.metrics import Metrics
from appliance.model import (
    AllocationRequest,
    Backend,
    Name,
    ObjectId,
    Pool,
    Service,
    ServiceSpec,
    field_errors,
)
from raft.cluster import Cluster, SubmitError
from raft.commands import (
    Allocate,
    Command,
    DeletePool,
    DeleteService,
    PutPool,
    PutService,
    Release,
    SetDrain,
    batch,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_BY_CODE = {
    "invalid": 422,
    "unsupported": 422,
    "not_found": 404,
    "conflict": 409,
    "exhausted": 409,
    "no_quorum": 503,
    "timeout": 503,
    "failed": 500,
    "too_large": 413,
}
_ID: TypeAdapter[str] = TypeAdapter(ObjectId)
_NAME: TypeAdapter[str] = TypeAdapter(Name)


def _checked(adapter: TypeAdapter[str], field: str, value: str) -> str:
    """A path parameter validated like the body field it names (before anything is
    proposed: refused ids went through Raft and came back with undocumented codes)."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise ApiError(422, "invalid", f"invalid {field}", field_errors(exc, field)) from None


M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ApiContext:
    cluster: Cluster
    metrics: Metrics
    token: str
    peers: dict[str, str]
    version: str
    write_timeout: float
    # Seconds since this node last saw each member's lease renewal change (None: never).
    lease_ages: Callable[[], dict[str, float | None]] | None = None
    # The nodes the leader's planner gives VIPs only as a last resort; None when not leading.
    warming: Callable[[], frozenset[str] | None] | None = None
    # Problems of pools this node cannot serve (layer-2 pools off its data segment), as field
    # errors under a prefix; None when the node checks nothing (announce: none).
    pool_check: Callable[[list[Pool], str], list[dict[str, Any]]] | None = None
    # This node's view of a service's backends (appliance.health), None when it checks none.
    backend_health: Callable[[str], list[dict[str, Any]]] | None = None
    backend_healthy: Callable[[str, Backend], bool] | None = None
    # A number that changes whenever a service's backends change health (caches key on it).
    health_version: Callable[[str], int] | None = None
    dataplane_status: Callable[[], dict[str, Any]] | None = None
    bgp_status: Callable[[], dict[str, Any]] | None = None
    # The layer-2 announcer's interface and counters (conflicts...), None without one.
    l2_status: Callable[[], dict[str, Any]] | None = None
    # Bounds on connections (appliance.api.guard), told when each request starts and ends.
    guard: ConnectionGuard | None = None


CTX = web.AppKey("ctx", ApiContext)


class _Internal:
    """Unexpected errors, logged with a short traceback at most once per interval per kind:
    one malformed request wrote 125 KB of traceback (a RecursionError's frames)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.last: dict[str, float] = {}
        self.count = 0

    def report(self, request: web.Request, exc: Exception) -> None:
        self.count += 1
        kind = type(exc).__name__
        now = time.monotonic()
        if now - self.last.get(kind, -self.every) < self.every:
            return
        self.last[kind] = now
        trace = "".join(traceback.format_exception(exc, limit=8))[-4000:]
        log.error(
            "%s %s failed with %s (%d internal error(s) so far); please report it:\n%s",
            request.method,
            request.path[:200],
            kind,
            self.count,
            trace,
        )


_INTERNAL = _Internal()
VIPS = web.AppKey("vips", VipsCache)


def error_response(
    status: int, code: str, message: str, fields: list[dict[str, Any]] | None = None
) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response({"error": body}, status=status, headers=headers)


def _authorized(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    try:
        # aiohttp decodes header bytes that are not UTF-8 as surrogates: such a token is wrong,
        # not an error.
        given_bytes = given.strip().encode()
    except UnicodeEncodeError:
        return False
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token.encode())


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CTX]
    guard = ctx.guard
    if guard is not None:
        guard.request_started(request.transport)
    try:
        if request.path != "/healthz" and not _authorized(
            request.headers.get("Authorization", ""), ctx.token
        ):
            response = error_response(
                401, "unauthorized", "missing or wrong bearer token (see --token-file)"
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="raftlb"'
            return response
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.fields)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    except Exception as exc:  # a bug: one short answer, and the log says it once in a while
        _INTERNAL.report(request, exc)
        return error_response(
            500, "internal", "internal error: the agent's log has the details (raftlb.api)"
        )
    finally:
        if guard is not None:
            guard.request_done(request.transport)


async def _json_body(request: web.Request) -> Any:
    """The body as JSON: `Content-Type: application/json`, within the size limit, read within
    BODY_SECONDS, UTF-8 whatever charset the header names (RFC 8259)."""
    if request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type is {request.headers.get('Content-Type')!r}: send application/json",
        )
    limit = APPLY_MAX_BYTES if request.path == "/v1/apply" else BODY_MAX_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(
            413, "too_large", f"the body has {request.content_length} bytes, more than {limit}"
        )
    try:
        async with asyncio.timeout(BODY_SECONDS):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(
            408, "request_timeout", f"the body did not arrive within {BODY_SECONDS:g} s"
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"the body has more than {limit} bytes") from None
    except (HttpProcessingError, RequestPayloadError) as exc:  # e.g. gzip that is not gzip
        raise ApiError(400, "bad_body", f"the body cannot be read: {exc}") from None
    if len(raw) > limit:
        raise ApiError(413, "too_large", f"the body has {len(raw)} bytes, more than {limit}")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not UTF-8: {exc}") from None
    except RecursionError:
        raise ApiError(400, "bad_json", "the body is nested too deeply") from None
    except ValueError as exc:  # not JSON, or a number of more than 4,300 digits
        raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None


def _parse(model: type[M], data: Any, prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid", "invalid body", field_errors(exc, prefix)) from None


# A service's refusals come from its allocation, whose `address` is the service's `vip`.
_SERVICE_FIELDS = {"address": "vip"}


async def _commit(
    ctx: ApiContext,
    command: Command,
    locate: Callable[[int], str] | None = None,
    rename: Callable[[int | None], dict[str, str]] | None = None,
) -> Any:
    """Submit a command; translate refusals into API errors; return the command's value.

    `locate` names the body item of a batch entry (e.g. 3 -> "services.1") so that a refused
    batch points at the item that was refused; `rename` gives, for an entry (None: not a
    batch), the body's names of the state's fields."""
    try:
        # The submit bounds itself; this bounds everything around it too, so that a write is
        # answered within write_timeout (and a little) whatever happens.
        async with asyncio.timeout(ctx.write_timeout + 1.0):
            result = await ctx.metrics.submit(command, ctx.write_timeout)
    except SubmitError as exc:
        raise ApiError(_STATUS_BY_CODE.get(exc.code, 503), exc.code, exc.message) from None
    except TimeoutError:
        raise ApiError(
            503,
            "timeout",
            f"not committed within {ctx.write_timeout:g}s; it may still be applied, and "
            "retrying is safe",
        ) from None
    if not result.get("ok"):
        err = result.get("error", {})
        code = str(err.get("code", "failed"))
        fields = err.get("details")
        index = err["index"] if isinstance(err.get("index"), int) else None
        prefix = locate(index) if locate and index is not None else ""
        if fields is None and (err.get("field") or prefix):
            name = err.get("field")
            if rename is not None and isinstance(name, str):
                name = rename(index).get(name, name)
            field = ".".join(part for part in (prefix, name) if part)
            fields = [{"field": field, "value": err.get("value"), "message": err.get("message")}]
        raise ApiError(
            _STATUS_BY_CODE.get(code, 500), code, str(err.get("message", "refused")), fields
        )
    return result.get("value")


def _ctx(request: web.Request) -> ApiContext:
    ctx = request.app[CTX]
    return ctx


# -- handlers -------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    status = _ctx(request).cluster.status()
    return web.json_response({"ok": True, "node": status.node_id, "role": status.role})


async def _in_thread(make: Callable[[], Any]) -> web.Response:
    """A big answer (thousands of services) made and encoded in a worker thread: the event
    loop keeps sending lease renewals and serving other requests meanwhile."""

    def encode() -> bytes:
        return json.dumps(make()).encode()

    return web.Response(body=await asyncio.to_thread(encode), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(_ctx(request).metrics.render)
    return web.Response(body=body, content_type="text/plain")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(_ctx(request).version, ROUTE_NAMES))


async def get_status(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    ages = ctx.lease_ages() if ctx.lease_ages else None
    view = status_view(
        ctx.cluster.view(),
        ctx.cluster.status(),
        ctx.peers,
        ctx.version,
        time.time(),
        ages,
        dataplane=ctx.dataplane_status() if ctx.dataplane_status else None,
        bgp=ctx.bgp_status() if ctx.bgp_status else None,
        l2=ctx.l2_status() if ctx.l2_status else None,
    )
    return web.json_response(text=view.model_dump_json())


async def get_nodes(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    ages = ctx.lease_ages() if ctx.lease_ages else None
    warming = ctx.warming() if ctx.warming else None
    nodes = nodes_view(
        ctx.cluster.view(), ctx.cluster.status(), ctx.peers, time.time(), ages, warming
    )
    return web.json_response([n.model_dump(mode="json") for n in nodes])


async def _set_drain(request: web.Request, drained: bool) -> web.Response:
    ctx = _ctx(request)
    node = request.match_info["node"]
    if node not in ctx.peers:
        raise ApiError(404, "not_found", f"node {node!r} is not a member ({', '.join(ctx.peers)})")
    value = await _commit(ctx, SetDrain(node=node, drained=drained))
    return web.json_response(value)


async def drain_node(request: web.Request) -> web.Response:
    """Move the node's VIPs away (break-before-make) and give it none until undrained."""
    return await _set_drain(request, True)


async def undrain_node(request: web.Request) -> web.Response:
    return await _set_drain(request, False)


async def list_pools(request: web.Request) -> web.Response:
    state = _ctx(request).cluster.view()
    return web.json_response([p.model_dump(mode="json") for _, p in sorted(state.pools.items())])


async def get_pool(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    pool = _ctx(request).cluster.view().pools.get(name)
    if pool is None:
        raise ApiError(404, "not_found", f"pool {name!r} does not exist")
    return web.json_response(pool.model_dump(mode="json"))


async def _body_named(request: web.Request, key: str, url_param: str) -> Any:
    """The JSON body, with `key` filled from the URL and refused when it says otherwise."""
    expected = request.match_info[url_param]
    body = await _json_body(request)
    if isinstance(body, dict):
        body.setdefault(key, expected)
        if body[key] != expected:
            raise ApiError(
                422,
                "invalid",
                f"{key} in body differs from the URL",
                [{"field": key, "value": body[key], "message": f"expected {expected!r}"}],
            )
    return body


def _stored(spec: ServiceSpec, result: dict[str, Any]) -> dict[str, Any]:
    """The service as stored: the spec sent and the address Raft answered (the apply returns
    only the address, to keep the Raft thread's work small)."""
    ids = result.get("backend_ids") or []
    return Service(spec=spec, address=result["address"], backend_ids=ids).model_dump(mode="json")


def _check_pools(ctx: ApiContext, pools: list[Pool], prefix: str) -> None:
    problems = ctx.pool_check(pools, prefix) if ctx.pool_check and pools else []
    if problems:
        raise ApiError(422, "invalid", "pool not on this appliance's data segment", problems)


async def put_pool(request: web.Request) -> web.Response:
    pool = _parse(Pool, await _body_named(request, "name", "name"))
    _check_pools(_ctx(request), [pool], "")
    value = await _commit(_ctx(request), PutPool(pool=pool))
    return web.json_response(value["pool"])


async def delete_pool(request: web.Request) -> web.Response:
    name = _checked(_NAME, "name", request.match_info["name"])
    value = await _commit(_ctx(request), DeletePool(name=name))
    return web.json_response(value)


async def list_services(request: web.Request) -> web.Response:
    state = _ctx(request).cluster.view()
    return await _in_thread(
        lambda: [s.model_dump(mode="json") for _, s in sorted(state.services.items())]
    )


async def get_service(request: web.Request) -> web.Response:
    service_id = request.match_info["id"]
    service = _ctx(request).cluster.view().services.get(service_id)
    if service is None:
        raise ApiError(404, "not_found", f"service {service_id!r} does not exist")
    ctx = _ctx(request)
    health = None
    if ctx.backend_health is not None:
        health = ServiceHealth(node=ctx.cluster.node_id, backends=ctx.backend_health(service_id))
    body = ServiceWithHealth(
        spec=service.spec, address=service.address, backend_ids=service.backend_ids, health=health
    )
    return web.json_response(
        text=body.model_dump_json(exclude={"health"} if health is None else None)
    )


async def put_service(request: web.Request) -> web.Response:
    spec = _parse(ServiceSpec, await _body_named(request, "id", "id"))
    value = await _commit(_ctx(request), PutService(service=spec), rename=lambda _: _SERVICE_FIELDS)
    return web.json_response(_stored(spec, value["service"]))


async def delete_service(request: web.Request) -> web.Response:
    service_id = _checked(_ID, "id", request.match_info["id"])
    value = await _commit(_ctx(request), DeleteService(id=service_id))
    return web.json_response(value)


async def list_allocations(request: web.Request) -> web.Response:
    state = _ctx(request).cluster.view()
    return await _in_thread(
        lambda: [a.model_dump(mode="json") for _, a in sorted(state.allocations.items())]
    )


async def create_allocation(request: web.Request) -> web.Response:
    req = _parse(AllocationRequest, await _json_body(request))
    value = await _commit(_ctx(request), Allocate(request=req))
    return web.json_response(value["allocation"])


async def delete_allocation(request: web.Request) -> web.Response:
    owner = _checked(_ID, "owner", request.match_info["owner"])
    value = await _commit(_ctx(request), Release(owner=owner))
    return web.json_response(value)


async def get_vips(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    announced = set(ctx.bgp_status().get("routes", [])) if ctx.bgp_status else None
    state = ctx.cluster.view()
    cache = request.app[VIPS]

    def body() -> bytes:
        return cache.body(state, ctx.backend_healthy, announced, ctx.health_version)

    data = await asyncio.to_thread(body)
    return web.Response(body=data, content_type="application/json")


async def apply_batch(request: web.Request) -> web.Response:
    """Apply pools and services (and deletions) all or nothing: `raftlb ... apply -f`."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be an object with pools and/or services")
    unknown = sorted(set(body) - {"pools", "services", "delete_services"})
    if unknown:
        raise ApiError(
            422,
            "invalid",
            "unknown keys",
            [{"field": k, "value": None, "message": "unknown key"} for k in unknown],
        )
    for key in ("pools", "services", "delete_services"):
        if not isinstance(body.get(key, []), list):
            raise ApiError(
                422,
                "invalid",
                f"{key} must be a list",
                [{"field": key, "value": body[key], "message": "must be a list"}],
            )
    # Counted before anything is validated: 100,000 items fit in 2 MiB.
    count = sum(len(body.get(key, [])) for key in ("pools", "services", "delete_services"))
    if count > APPLY_MAX_ITEMS:
        raise ApiError(
            413,
            "too_large",
            f"{count} items (pools + services + delete_services), more than "
            f"{APPLY_MAX_ITEMS} in one request: split them into several /v1/apply requests",
        )
    if not count:
        raise ApiError(422, "invalid", "nothing to apply: give pools, services or delete_services")
    try:
        parsed = ApplyBody.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, "invalid", "invalid apply body", field_errors(exc)) from None
    pools, services, deletes = parsed.pools, parsed.services, parsed.delete_services
    _check_pools(_ctx(request), pools, "pools")

    def locate(index: int) -> str:
        if index < len(pools):
            return f"pools.{index}"
        if index < len(pools) + len(services):
            return f"services.{index - len(pools)}"
        return f"delete_services.{index - len(pools) - len(services)}"

    def rename(index: int | None) -> dict[str, str]:
        is_service = index is not None and len(pools) <= index < len(pools) + len(services)
        return _SERVICE_FIELDS if is_service else {}

    value = await _commit(_ctx(request), batch(pools, services, deletes), locate, rename)
    results = value["results"]
    for i, spec in enumerate(services):
        results[len(pools) + i] = {"service": _stored(spec, results[len(pools) + i]["service"])}
    return await _in_thread(lambda: value)


def build_app(ctx: ApiContext) -> web.Application:
    # aiohttp refuses (413) bodies past client_max_size; /v1/apply checks its own limit.
    app = web.Application(
        middlewares=[_errors_and_auth], client_max_size=max(APPLY_MAX_BYTES, BODY_MAX_BYTES)
    )
    app[CTX] = ctx
    app[VIPS] = VipsCache()
    app.add_routes([web.route(method, path, handler) for method, path, handler in ROUTES])
    return app


# The one list of the API's routes: the app is built from it and the OpenAPI document's paths
# are generated from it (appliance.api.openapi names each operation by its handler).
ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("GET", "/healthz", healthz),
    ("GET", "/metrics", metrics),
    ("GET", "/v1/openapi.json", openapi),
    ("GET", "/v1/status", get_status),
    ("GET", "/v1/nodes", get_nodes),
    ("POST", "/v1/nodes/{node}/drain", drain_node),
    ("POST", "/v1/nodes/{node}/undrain", undrain_node),
    ("GET", "/v1/pools", list_pools),
    ("GET", "/v1/pools/{name}", get_pool),
    ("PUT", "/v1/pools/{name}", put_pool),
    ("DELETE", "/v1/pools/{name}", delete_pool),
    ("GET", "/v1/services", list_services),
    ("GET", "/v1/services/{id:.+}", get_service),
    ("PUT", "/v1/services/{id:.+}", put_service),
    ("DELETE", "/v1/services/{id:.+}", delete_service),
    ("GET", "/v1/allocations", list_allocations),
    ("POST", "/v1/allocations", create_allocation),
    ("DELETE", "/v1/allocations/{owner:.+}", delete_allocation),
    ("GET", "/v1/vips", get_vips),
    ("POST", "/v1/apply", apply_batch),
)
ROUTE_NAMES = tuple((method, path, handler.__name__) for method, path, handler in ROUTES)
