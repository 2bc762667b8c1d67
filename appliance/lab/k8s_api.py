"""A small Kubernetes API server (the wire protocol the real client speaks), for the lab,
its tests and benchmarks.

Lists (`resourceVersion` in the list metadata), watch streams (`?watch=true`: chunked JSON
lines of ADDED/MODIFIED/DELETED events after the given resourceVersion, BOOKMARK events when
asked, an ERROR event with code 410 when the version is older than the kept history), PATCH of
a Service and of its status by the patch type its Content-Type names (`k8s_patch`), DELETE of a
Service with finalizers as the real server does it (deletionTimestamp first, gone when the last
finalizer is removed, no new finalizer meanwhile), and Events (created with generateName,
patched). One global resourceVersion counter, as in etcd.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import json
import time
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from appliance.lab.k8s_patch import PatchError, apply_patch

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
        self.event_patches: list[tuple[str, dict[str, Any]]] = []
        self.patches: list[tuple[str, dict[str, Any]]] = []  # status patches, by Service key
        self.service_patches: list[tuple[str, Any]] = []
        self.watches = 0
        self.compactions = 0
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
        """Delete as the real server does: an object with finalizers only gets its
        deletionTimestamp, and goes once its last finalizer is removed."""
        obj = self.objects[kind][k]
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["deletionGracePeriodSeconds"] = 0
                self._record(kind, "MODIFIED", obj)
            return
        del self.objects[kind][k]
        self._record(kind, "DELETED", obj)

    def compact(self) -> None:
        """Forget the history: every watch from an older version now gets 410 Gone, and so
        does every open watch (it may not have seen the forgotten events yet)."""
        self.history.clear()
        self.oldest = self.rv
        self.compactions += 1
        if self._changed is not None:
            task = asyncio.ensure_future(self._notify())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        service = "/api/v1/namespaces/{namespace}/services/{name}"
        app.router.add_patch(f"{service}/status", self._patch_status)
        app.router.add_patch(service, self._patch_service)
        app.router.add_delete(service, self._delete_service)
        app.router.add_post("/api/v1/namespaces/{namespace}/events", self._post_event)
        app.router.add_patch("/api/v1/namespaces/{namespace}/events/{name}", self._patch_event)
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

        compactions = self.compactions
        if since < self.oldest:
            return await self._gone(response, send, since)
        deadline = asyncio.get_running_loop().time() + timeout
        assert self._changed is not None
        while True:
            if self.compactions != compactions:
                return await self._gone(response, send, since)
            # The history is in rv order: start after `since` (a scan from the start made
            # every change cost the whole history, quadratic in a benchmark's thousands).
            start = bisect.bisect_right(self.history, since, key=lambda entry: entry[0])
            for rv, k, event_type, obj in self.history[start:]:
                if k == kind:
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

    async def _gone(
        self, response: web.StreamResponse, send: Any, since: int
    ) -> web.StreamResponse:
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

    async def _patched(
        self, request: web.Request, obj: dict[str, Any]
    ) -> tuple[dict[str, Any], Any]:
        """`obj` patched by the request, and the patch as sent (recorded by the callers)."""
        body = await request.json()
        return apply_patch(obj, request.headers.get("Content-Type", ""), body), body

    def _service(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        k = f"{request.match_info['namespace']}/{request.match_info['name']}"
        obj = self.objects["services"].get(k)
        if obj is None:
            raise PatchError(404, "NotFound", f'services "{request.match_info["name"]}" not found')
        return k, obj

    async def _patch_status(self, request: web.Request) -> web.Response:
        """The status subresource: only `status` changes, whatever else the patch holds."""
        try:
            k, obj = self._service(request)
            patched, _ = await self._patched(request, obj)
        except PatchError as exc:
            return web.json_response(exc.status(), status=exc.code)
        self.patches.append((k, {"status": patched.get("status")}))
        obj["status"] = patched.get("status") or {}
        self._record("services", "MODIFIED", obj)
        return web.json_response(obj)

    async def _patch_service(self, request: web.Request) -> web.Response:
        """The object: metadata (labels, annotations, finalizers) and spec; never status, and
        never a new finalizer once its deletion has started."""
        try:
            k, obj = self._service(request)
            patched, body = await self._patched(request, obj)
            before = obj["metadata"].get("finalizers") or []
            after = patched["metadata"].get("finalizers") or []
            if obj["metadata"].get("deletionTimestamp") and set(after) - set(before):
                raise PatchError(
                    422,
                    "Invalid",
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the "
                    "object is being deleted",
                )
        except PatchError as exc:
            return web.json_response(exc.status(), status=exc.code)
        self.service_patches.append((k, body))
        kept = {f: obj["metadata"][f] for f in _SERVER_OWNED if f in obj["metadata"]}
        obj["metadata"] = {**patched["metadata"], **kept}
        obj["spec"] = patched.get("spec") or {}
        if obj["metadata"].get("deletionTimestamp") and not after:
            del self.objects["services"][k]
            self._record("services", "DELETED", obj)
        else:
            self._record("services", "MODIFIED", obj)
        return web.json_response(obj)

    async def _delete_service(self, request: web.Request) -> web.Response:
        try:
            k, obj = self._service(request)
        except PatchError as exc:
            return web.json_response(exc.status(), status=exc.code)
        self.delete("services", k)
        return web.json_response(obj)

    async def _post_event(self, request: web.Request) -> web.Response:
        event = await request.json()
        meta = event.setdefault("metadata", {})
        if not meta.get("name"):
            self.rv += 1  # a name the real server would make up: generateName + a suffix
            meta["name"] = f"{meta.get('generateName', 'event.')}{self.rv:x}"
        meta["namespace"] = request.match_info["namespace"]
        self.events.append(event)
        return web.json_response(event, status=201)

    async def _patch_event(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = [i for i, e in enumerate(self.events) if e["metadata"].get("name") == name]
        if not found:
            status = PatchError(404, "NotFound", f'events "{name}" not found').status()
            return web.json_response(status, status=404)
        try:
            patched, body = await self._patched(request, self.events[found[0]])
        except PatchError as exc:
            return web.json_response(exc.status(), status=exc.code)
        self.event_patches.append((name, body))
        self.events[found[0]] = patched
        return web.json_response(patched)


# Set by the server only: a patch cannot change them.
_SERVER_OWNED = ("uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
