"""The OpenAPI 3.1 description of the agent API, built from the same models that parse bodies."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from appliance.api.guard import IDLE_SECONDS, MAX_CONNECTIONS
from appliance.bodies import ApplyAnswer, ApplyBody, ServiceWithHealth, Status, VipEntry
from appliance.limits import APPLY_MAX_BYTES, APPLY_MAX_ITEMS, BODY_MAX_BYTES, BODY_SECONDS
from appliance.model import (
    NAME_PATTERN,
    OBJECT_ID_PATTERN,
    Allocation,
    AllocationRequest,
    NodeInfo,
    Pool,
    Service,
    ServiceSpec,
)

_MODELS: list[type[BaseModel]] = [
    Pool,
    ServiceSpec,
    Service,
    AllocationRequest,
    Allocation,
    NodeInfo,
    Status,
    VipEntry,
    ServiceWithHealth,
    ApplyBody,
    ApplyAnswer,
]
_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "field": {"type": "string"},
                            "value": {},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed request (refused by the HTTP parser before any handler), or a body "
        "that is not JSON",
        401: "Missing or wrong bearer token",
        404: "Unknown id",
        409: "Conflict (address taken, pool exhausted or in use, overlap)",
        408: "The body did not arrive in time (see info.x-limits)",
        413: "Body too large, or too many items in one /v1/apply (see info.x-limits)",
        415: "Content-Type is not application/json",
        422: "Invalid body; one entry per bad field",
        503: "Not committed within the write timeout (no quorum): it may still be applied; "
        "retrying is safe (writes are idempotent)",
    }
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


def _op(summary: str, ok: dict[str, Any], *codes: int, body: str | None = None) -> dict[str, Any]:
    # Any request may get a 400: aiohttp's parser refuses a malformed one before routing.
    responses = {"200": ok, **_errors(400, 401, *codes)}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return op


_NAME = {"type": "string", "minLength": 1, "maxLength": 63, "pattern": NAME_PATTERN}
_ID = {"type": "string", "minLength": 1, "maxLength": 253, "pattern": OBJECT_ID_PATTERN}


def _param(name: str, description: str, schema: dict[str, Any] | None = None) -> list[Any]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": schema or {"type": "string"},
            "description": description,
        }
    ]


def _named_in_url(schema: dict[str, Any], key: str) -> dict[str, Any]:
    """A PUT body: the model's schema with `key` optional (the URL gives it)."""
    required = [r for r in schema.get("required", []) if r != key]
    return {**schema, "required": required, "title": f"{schema.get('title')}Body"}


_OBJ = {"type": "object"}
_WRITES = (400, 408, 409, 413, 415, 422, 503)


def _list_of(name: str) -> dict[str, Any]:
    return _json({"type": "array", "items": _ref(name)})


# Each route's operation, by the name of its handler (appliance.api.app.ROUTES).
_OPERATIONS: dict[str, dict[str, Any]] = {
    "healthz": {
        "summary": "Liveness (no auth)",
        "security": [],
        "responses": {"200": _json(_OBJ), **_errors(400)},
    },
    "metrics": {
        "summary": "Prometheus metrics",
        "responses": {"200": {"description": "text exposition format"}, **_errors(400, 401)},
    },
    "openapi": _op("This document", _json(_OBJ)),
    "get_status": _op("This node's view of the cluster", _json(_ref("Status"))),
    "get_nodes": _op("Members", _list_of("NodeInfo")),
    "drain_node": _op("Drain: move its VIPs away, break-before-make", _json(_OBJ), 404, 503),
    "undrain_node": _op("Undrain: it may own VIPs again", _json(_OBJ), 404, 503),
    "list_pools": _op("List pools", _list_of("Pool")),
    "get_pool": _op("Get a pool", _json(_ref("Pool")), 404),
    "put_pool": _op(
        "Create or replace a pool", _json(_ref("Pool")), *_WRITES, 404, body="PoolBody"
    ),
    "delete_pool": _op("Delete an unused pool", _json(_OBJ), 404, 409, 422, 503),
    "list_services": _op("List services", _list_of("Service")),
    "get_service": _op("Get a service", _json(_ref("ServiceWithHealth")), 404, 422),
    "put_service": _op(
        "Create or replace a service; allocates its VIP",
        _json(_ref("Service")),
        *_WRITES,
        404,
        body="ServiceSpecBody",
    ),
    "delete_service": _op("Delete a service and release its VIP", _json(_OBJ), 404, 422, 503),
    "list_allocations": _op("List allocations", _list_of("Allocation")),
    "create_allocation": _op(
        "Allocate an address (idempotent by owner)",
        _json(_ref("Allocation")),
        *_WRITES,
        404,
        body="AllocationRequest",
    ),
    "delete_allocation": _op("Release an allocation", _json(_OBJ), 404, 409, 422, 503),
    "get_vips": _op("Allocated addresses", _list_of("VipEntry")),
    "apply_batch": _op(
        "Apply pools and services all or nothing",
        _json(_ref("ApplyAnswer")),
        *_WRITES,
        404,
        body="ApplyBody",
    ),
}
_PATH_PARAMETERS = {
    "node": ("node id", _NAME),
    "name": ("pool name", _NAME),
    "id": ("service id, e.g. cluster/namespace/name", _ID),
    "owner": ("allocation owner key", _ID),
}
_VARIABLE = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def _paths(routes: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
    """The document's paths from the app's routes (method, aiohttp path, handler name)."""
    paths: dict[str, Any] = {}
    for method, route, handler in routes:
        operation = _OPERATIONS.get(handler)
        if operation is None:
            raise ValueError(f"route {method} {route} ({handler}) has no OpenAPI operation")
        path = _VARIABLE.sub(r"{\1}", route)  # /v1/services/{id:.+} -> /v1/services/{id}
        entry = paths.setdefault(path, {})
        names = _VARIABLE.findall(route)
        if names:
            entry["parameters"] = [p for n in names for p in _param(n, *_PATH_PARAMETERS[n])]
        entry[method.lower()] = operation
    return paths


@cache
def openapi_document(version: str, routes: tuple[tuple[str, str, str], ...]) -> dict[str, Any]:
    """The document for the API built from `routes` (appliance.api.app.ROUTE_NAMES)."""
    _, defs = models_json_schema(
        [(m, "validation") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["Error"] = _ERROR
    schemas["ApplyBody"] = {
        **schemas["ApplyBody"],
        "description": f"{schemas['ApplyBody'].get('description')} At most {APPLY_MAX_ITEMS} "
        f"items and {APPLY_MAX_BYTES} bytes.",
    }
    schemas["PoolBody"] = _named_in_url(schemas["Pool"], "name")
    schemas["ServiceSpecBody"] = _named_in_url(schemas["ServiceSpec"], "id")
    paths = _paths(routes)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "raftlb appliance API",
            "version": version,
            "x-limits": {
                "apply_max_items": APPLY_MAX_ITEMS,
                "apply_max_bytes": APPLY_MAX_BYTES,
                "body_max_bytes": BODY_MAX_BYTES,
                "body_seconds": BODY_SECONDS,
                "connections": MAX_CONNECTIONS,
                "idle_seconds": IDLE_SECONDS,
            },
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
