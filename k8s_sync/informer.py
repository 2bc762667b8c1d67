"""List+watch of one kind of Kubernetes object into a local store, with the real client.

`Informer.run` lists (keeping the list's resourceVersion), then watches from it with bookmarks;
a watch that ends is resumed from the last version seen; an ERROR 410 Gone (the version was
compacted away) makes it list again, and the objects that vanished meanwhile are reported as
DELETED. Connection errors back off (0.5 s doubling to 30 s, with jitter) and keep the store as
it was: the appliance keeps serving what it had while the Kubernetes API is down. Objects are
plain dicts (the API's JSON). Watch events are deserialized by the client and turned back into
that JSON: its `deserialize=False` mode fails on ERROR events (it looks for `raw_object`), so a
410 would never be seen. `on_event(type, obj)` runs on the informer's thread for every change.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from appliance.backoff import Backoff
from k8s_sync import MISSING_CLIENT

try:
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException
except ModuleNotFoundError as exc:  # the client is an extra: say which
    if exc.name != "kubernetes":
        raise
    raise ModuleNotFoundError(MISSING_CLIENT, name=exc.name) from None

log = logging.getLogger("raftlb.k8s")
RETRY = Backoff(first=0.5, cap=30.0)  # the wait before listing or watching again after a failure
EventHandler = Callable[[str, dict[str, Any]], None]


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name')}"


class Informer:
    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        on_event: EventHandler,
        watch_seconds: int = 300,
        index: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.name = name
        self.list_fn = list_fn
        self.on_event = on_event
        self.watch_seconds = watch_seconds
        self.store: dict[str, dict[str, Any]] = {}
        # Objects by `index(obj)` (e.g. EndpointSlices by their Service), so that a lookup
        # does not scan the store: per Service, that scan made a cold sync quadratic.
        self._index_of = index
        self._index: dict[str, dict[str, dict[str, Any]]] = {}
        self.resource_version: str | None = None
        self.lists = 0
        self.failures = 0
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._watch: watch.Watch | None = None
        # The client of the list function turns models back into the API's JSON.
        self._to_json = list_fn.__self__.api_client.sanitize_for_serialization  # type: ignore[attr-defined]

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self.store.get(key)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.store.values())

    def indexed(self, value: str) -> list[dict[str, Any]]:
        """The objects whose index is `value` (see `index`)."""
        with self._lock:
            return list(self._index.get(value, {}).values())

    def _put(self, key: str, obj: dict[str, Any]) -> None:  # lock held
        self._drop(key)
        self.store[key] = obj
        value = self._index_of(obj) if self._index_of is not None else None
        if value is not None:
            self._index.setdefault(value, {})[key] = obj

    def _drop(self, key: str) -> None:  # lock held
        old = self.store.pop(key, None)
        if old is None or self._index_of is None:
            return
        value = self._index_of(old)
        if value is not None:
            members = self._index.get(value, {})
            members.pop(key, None)
            if not members:
                self._index.pop(value, None)

    def relist(self) -> None:
        response = self.list_fn(_preload_content=False)
        body = json.loads(response.data)
        items = {object_key(o): o for o in body.get("items") or []}
        with self._lock:
            gone = [o for k, o in self.store.items() if k not in items]
            changed = [o for k, o in items.items() if self.store.get(k) != o]
            self.store, self._index = {}, {}
            for key, obj in items.items():
                self._put(key, obj)
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion")
        self.lists += 1
        self.synced.set()
        for obj in gone:
            self.on_event("DELETED", obj)
        for obj in changed:
            self.on_event("MODIFIED", obj)

    def watch_once(self) -> None:
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        stream = self._watch.stream(  # type: ignore[no-untyped-call]
            self.list_fn,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_seconds,
        )
        for event in stream:
            kind = event.get("type")
            obj = self._to_json(event.get("object")) or {}
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self.resource_version = version
            if kind == "BOOKMARK":
                continue
            with self._lock:
                if kind == "DELETED":
                    self._drop(object_key(obj))
                else:
                    self._put(object_key(obj), obj)
            self.on_event(str(kind), obj)

    def run(self, stop: threading.Event) -> None:
        failures = 0  # in a row
        while not stop.is_set():
            try:
                if self.resource_version is None:
                    self.relist()
                self.watch_once()
                failures = 0
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s: watch expired (410 Gone): listing again", self.name)
                    self.resource_version = None
                    continue
                failures += 1
                self._failed(stop, RETRY.delay(failures), f"HTTP {exc.status} {exc.reason}")
            except Exception as exc:  # the client raises urllib3 and socket errors as they come
                failures += 1
                self._failed(stop, RETRY.delay(failures), f"{type(exc).__name__}: {exc}")

    def _failed(self, stop: threading.Event, backoff: float, why: str) -> None:
        if stop.is_set():
            return  # stopping: the stream was cut on purpose
        self.failures += 1
        log.warning(
            "%s: Kubernetes API unreachable or failing (%s); keeping the last state and "
            "retrying in %.1fs",
            self.name,
            why,
            backoff,
        )
        stop.wait(backoff)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]
