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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from appliance.api.openapi import openapi_document
from appliance.api.views import VipsCache, nodes_view, status_view
from appliance.limits import APPLY_MAX_BYTES, APPLY_MAX_ITEMS, BODY_MAX_BYTES
from appliance.metrics import Metrics
from appliance.model import (
    AllocationRequest,
    Backend,
    Pool,
    Service,
    ServiceSpec,
    field_errors,
)
from raft.cluster import Cluster, SubmitError

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
_POOLS: TypeAdapter[list[Pool]] = TypeAdapter(list[Pool])
_SERVICES: TypeAdapter[list[ServiceSpec]] = TypeAdapter(list[ServiceSpec])
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


CTX = web.AppKey("ctx", ApiContext)
VIPS = web.AppKey("vips", VipsCache)


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, fields: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields


def error_response(
    status: int, code: str, message: str, fields: list[dict[str, Any]] | None = None
) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response({"error": body}, status=status, headers=headers)


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CTX]
    if request.path != "/healthz":
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), ctx.token.encode()
        ):
            response = error_response(
                401, "unauthorized", "missing or wrong bearer token (see --token-file)"
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="raftlb"'
            return response
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.fields)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        raise


async def _json_body(request: web.Request) -> Any:
    limit = APPLY_MAX_BYTES if request.path == "/v1/apply" else BODY_MAX_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(
            413, "too_large", f"the body has {request.content_length} bytes, more than {limit}"
        )
    try:
        return await request.json(loads=json.loads)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "bad_json", f"the body is not JSON (UTF-8): {exc}") from None


def _parse(model: type[M], data: Any, prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid", "invalid body", field_errors(exc, prefix)) from None


async def _commit(
    ctx: ApiContext, command: dict[str, Any], locate: Callable[[int], str] | None = None
) -> Any:
    """Submit a command; translate refusals into API errors; return the command's value.

    `locate` names the body item of a batch entry (e.g. 3 -> "services.1") so that a refused
    batch points at the item that was refused."""
    try:
        result = await ctx.metrics.submit(command, ctx.write_timeout)
    except SubmitError as exc:
        raise ApiError(_STATUS_BY_CODE.get(exc.code, 503), exc.code, exc.message) from None
    if not result.get("ok"):
        err = result.get("error", {})
        code = str(err.get("code", "failed"))
        fields = err.get("details")
        prefix = locate(err["index"]) if locate and isinstance(err.get("index"), int) else ""
        if fields is None and (err.get("field") or prefix):
            field = ".".join(part for part in (prefix, err.get("field")) if part)
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
    return web.json_response(openapi_document(_ctx(request).version))


async def get_status(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    ages = ctx.lease_ages() if ctx.lease_ages else None
    view = status_view(
        ctx.cluster.view(), ctx.cluster.status(), ctx.peers, ctx.version, time.time(), ages
    )
    view["dataplane"] = ctx.dataplane_status() if ctx.dataplane_status else {"forward": "none"}
    view["bgp"] = ctx.bgp_status() if ctx.bgp_status else None
    return web.json_response(view)


async def get_nodes(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    ages = ctx.lease_ages() if ctx.lease_ages else None
    nodes = nodes_view(ctx.cluster.view(), ctx.cluster.status(), ctx.peers, time.time(), ages)
    return web.json_response([n.model_dump(mode="json") for n in nodes])


async def _set_drain(request: web.Request, drained: bool) -> web.Response:
    ctx = _ctx(request)
    node = request.match_info["node"]
    if node not in ctx.peers:
        raise ApiError(404, "not_found", f"node {node!r} is not a member ({', '.join(ctx.peers)})")
    value = await _commit(ctx, {"v": 1, "type": "node.drain", "node": node, "drained": drained})
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
    return Service(spec=spec, address=result["address"]).model_dump(mode="json")


def _check_pools(ctx: ApiContext, pools: list[Pool], prefix: str) -> None:
    problems = ctx.pool_check(pools, prefix) if ctx.pool_check and pools else []
    if problems:
        raise ApiError(422, "invalid", "pool not on this appliance's data segment", problems)


async def put_pool(request: web.Request) -> web.Response:
    pool = _parse(Pool, await _body_named(request, "name", "name"))
    _check_pools(_ctx(request), [pool], "")
    command = {"v": 1, "type": "pool.put", "pool": pool.model_dump(mode="json")}
    value = await _commit(_ctx(request), command)
    return web.json_response(value["pool"])


async def delete_pool(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    value = await _commit(_ctx(request), {"v": 1, "type": "pool.delete", "name": name})
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
    body = service.model_dump(mode="json")
    ctx = _ctx(request)
    if ctx.backend_health is not None:
        body["health"] = {"node": ctx.cluster.node_id, "backends": ctx.backend_health(service_id)}
    return web.json_response(body)


async def put_service(request: web.Request) -> web.Response:
    spec = _parse(ServiceSpec, await _body_named(request, "id", "id"))
    command = {"v": 1, "type": "service.put", "service": spec.model_dump(mode="json")}
    value = await _commit(_ctx(request), command)
    return web.json_response(_stored(spec, value["service"]))


async def delete_service(request: web.Request) -> web.Response:
    service_id = request.match_info["id"]
    value = await _commit(_ctx(request), {"v": 1, "type": "service.delete", "id": service_id})
    return web.json_response(value)


async def list_allocations(request: web.Request) -> web.Response:
    state = _ctx(request).cluster.view()
    return await _in_thread(
        lambda: [a.model_dump(mode="json") for _, a in sorted(state.allocations.items())]
    )


async def create_allocation(request: web.Request) -> web.Response:
    req = _parse(AllocationRequest, await _json_body(request))
    command = {"v": 1, "type": "allocation.create", "request": req.model_dump(mode="json")}
    value = await _commit(_ctx(request), command)
    return web.json_response(value["allocation"])


async def delete_allocation(request: web.Request) -> web.Response:
    owner = request.match_info["owner"]
    value = await _commit(_ctx(request), {"v": 1, "type": "allocation.delete", "owner": owner})
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
    try:
        pools = _POOLS.validate_python(body.get("pools", []))
    except ValidationError as exc:
        raise ApiError(422, "invalid", "invalid pools", field_errors(exc, "pools")) from None
    _check_pools(_ctx(request), pools, "pools")
    try:
        services = _SERVICES.validate_python(body.get("services", []))
    except ValidationError as exc:
        raise ApiError(422, "invalid", "invalid services", field_errors(exc, "services")) from None
    deletes = body.get("delete_services", [])
    if not isinstance(deletes, list) or not all(isinstance(d, str) for d in deletes):
        raise ApiError(422, "invalid", "delete_services must be a list of ids")
    commands: list[dict[str, Any]] = [
        {"v": 1, "type": "pool.put", "pool": p.model_dump(mode="json")} for p in pools
    ]
    commands += [
        {"v": 1, "type": "service.put", "service": s.model_dump(mode="json")} for s in services
    ]
    commands += [{"v": 1, "type": "service.delete", "id": d} for d in deletes]
    if not commands:
        raise ApiError(422, "invalid", "nothing to apply: give pools, services or delete_services")
    if len(commands) > APPLY_MAX_ITEMS:
        raise ApiError(
            413,
            "too_large",
            f"{len(commands)} items (pools + services + delete_services), more than "
            f"{APPLY_MAX_ITEMS} in one request: split them into several /v1/apply requests",
        )

    def locate(index: int) -> str:
        if index < len(pools):
            return f"pools.{index}"
        if index < len(pools) + len(services):
            return f"services.{index - len(pools)}"
        return f"delete_services.{index - len(pools) - len(services)}"

    value = await _commit(_ctx(request), {"v": 1, "type": "batch", "commands": commands}, locate)
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
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/metrics", metrics),
            web.get("/v1/openapi.json", openapi),
            web.get("/v1/status", get_status),
            web.get("/v1/nodes", get_nodes),
            web.post("/v1/nodes/{node}/drain", drain_node),
            web.post("/v1/nodes/{node}/undrain", undrain_node),
            web.get("/v1/pools", list_pools),
            web.get("/v1/pools/{name}", get_pool),
            web.put("/v1/pools/{name}", put_pool),
            web.delete("/v1/pools/{name}", delete_pool),
            web.get("/v1/services", list_services),
            web.get("/v1/services/{id:.+}", get_service),
            web.put("/v1/services/{id:.+}", put_service),
            web.delete("/v1/services/{id:.+}", delete_service),
            web.get("/v1/allocations", list_allocations),
            web.post("/v1/allocations", create_allocation),
            web.delete("/v1/allocations/{owner:.+}", delete_allocation),
            web.get("/v1/vips", get_vips),
            web.post("/v1/apply", apply_batch),
        ]
    )
    return app
