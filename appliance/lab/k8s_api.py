"""A small Kubernetes API server (the wire protocol the real client speaks), for the lab,
its tests and benchmarks.

Lists (`resourceVersion` in the list metadata), watch streams (`?watch=true`: chunked JSON
lines of ADDED/MODIFIED/DELETED events after the given resourceVersion, BOOKMARK events when
asked, an ERROR event with code 410 when the version is older than the kept history), merge
patch of a Service's status, and Events. One global resourceVersion counter, as in etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

KINDS = {
    "services": ("/api/v1/services", "ServiceList", "v1"),
    "nodes": ("/api/v1/nodes", "NodeList", "v1"),
    "endpointslices": (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSliceList",
        "discovery.k8s.io/v1",
    ),
}


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig for `server` without credentials (this server asks for none)."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "lab", "cluster": {"server": server}}],
                "users": [{"name": "lab", "user": {}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
                "current-context": "lab",
            }
        )
    )
    return path


def key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class FakeApiServer:
    """Objects by kind, an event history, and the aiohttp app serving them."""

    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, kind, type, obj
        self.oldest = self.rv  # watches from before this get 410 Gone
        self.events: list[dict[str, Any]] = []
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.watches = 0
        self._changed: asyncio.Condition | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    # --- changing the world (call through `call`, from the test's thread) ----------------------

    def _record(self, kind: str, kind_event: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, kind, kind_event, copy.deepcopy(obj)))
        if self._changed is not None:
            task = asyncio.ensure_future(self._notify())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def put(self, kind: str, obj: dict[str, Any]) -> None:
        k = key(obj)
        event = "MODIFIED" if k in self.objects[kind] else "ADDED"
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("uid", f"uid-{kind}-{k}")
        self.objects[kind][k] = obj
        self._record(kind, event, obj)

    def delete(self, kind: str, k: str) -> None:
        obj = self.objects[kind].pop(k)
        self._record(kind, "DELETED", obj)

    def compact(self) -> None:
        """Forget the history: every watch from an older version now gets 410 Gone."""
        self.history.clear()
        self.oldest = self.rv

    def call(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the server's loop (from the test's thread) and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    # --- the HTTP side -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        for kind, (path, _, _) in KINDS.items():
            app.router.add_get(path, self._handler(kind))
        app.router.add_patch(
            "/api/v1/namespaces/{namespace}/services/{name}/status", self._patch_status
        )
        app.router.add_post("/api/v1/namespaces/{namespace}/events", self._post_event)
        app.on_startup.append(self._startup)
        return app

    async def _startup(self, app: web.Application) -> None:
        self._changed = asyncio.Condition()
        self.loop = asyncio.get_running_loop()

    def _handler(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            if request.query.get("watch") in ("true", "1", "True"):
                return await self._watch(request, kind)
            _, list_kind, api_version = KINDS[kind]
            return web.json_response(
                {
                    "kind": list_kind,
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": list(self.objects[kind].values()),
                }
            )

        return handle

    async def _watch(self, request: web.Request, kind: str) -> web.StreamResponse:
        try:
            return await self._stream(request, kind)
        except ConnectionResetError:  # the client went away (aiohttp's error is one of these)
            return web.StreamResponse()

    async def _stream(self, request: web.Request, kind: str) -> web.StreamResponse:
        self.watches += 1
        since = int(request.query.get("resourceVersion") or self.rv)
        timeout = float(request.query.get("timeoutSeconds") or 30)
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "True", "1")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(event: dict[str, Any]) -> None:
            await response.write((json.dumps(event) + "\n").encode())

        if since < self.oldest:
            await send(
                {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": f"too old resource version: {since} ({self.oldest})",
                        "reason": "Expired",
                        "code": 410,
                    },
                }
            )
            await response.write_eof()
            return response
        deadline = asyncio.get_running_loop().time() + timeout
        assert self._changed is not None
        while True:
            for rv, k, event_type, obj in list(self.history):
                if rv > since and k == kind:
                    await send({"type": event_type, "object": obj})
                    since = rv
            if bookmarks:
                await send(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": "Bookmark",
                            "metadata": {"resourceVersion": str(self.rv)},
                        },
                    }
                )
                since = max(since, self.rv)
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
        await response.write_eof()
        return response

    async def _patch_status(self, request: web.Request) -> web.Response:
        k = f"{request.match_info['namespace']}/{request.match_info['name']}"
        if k not in self.objects["services"]:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        patch = await request.json()
        self.patches.append((k, patch))
        obj = self.objects["services"][k]
        _merge(obj, patch)
        self._record("services", "MODIFIED", obj)
        return web.json_response(obj)

    async def _post_event(self, request: web.Request) -> web.Response:
        event = await request.json()
        self.events.append(event)
        return web.json_response(event, status=201)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386)."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
