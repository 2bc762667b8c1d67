"""Events on Services, aggregated as client-go's recorder does: one Event per (Service, type,
reason, message), its count raised when the same thing happens again.

An invalid Service is reconciled again at every Node or EndpointSlice change and every resync:
creating an Event each time put dozens a minute on it. Here the first occurrence creates the
Event; repeats only count, and the count and lastTimestamp are patched at most once per
`interval` (so `kubectl describe` shows "x12 over 5m" without a write per reconcile). A new
message (the problem changed) is a new Event at once.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("raftlb.k8s")
# Series remembered (the oldest are forgotten first): far more than Services that misbehave
# at once; a forgotten one starts a new Event, as after a restart of the sync.
REMEMBERED = 4096


@dataclass
class _Series:
    name: str | None  # the Event's name, once created
    namespace: str
    count: int
    patched_count: int
    patched_at: float


def _timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Thread-safe: reports run concurrently. Best effort: a failed write is logged at debug
    level and never fails a reconcile."""

    def __init__(
        self,
        core: Any,
        component: str,
        interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.component = component
        self.interval = interval
        self.clock = clock
        self.created = 0
        self.patched = 0
        self._lock = threading.Lock()
        self._series: OrderedDict[tuple[str, str, str, str], _Series] = OrderedDict()

    def record(self, service: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = service.get("metadata") or {}
        message = message[:1000]
        subject = str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
        key = (subject, kind, reason, message)
        now = self.clock()
        with self._lock:
            series = self._series.get(key)
            if series is not None:
                self._series.move_to_end(key)
                series.count += 1
                due = series.name is not None and now - series.patched_at >= self.interval
                if not due or series.count == series.patched_count:
                    return
                series.patched_count, series.patched_at = series.count, now
                name, count = series.name, series.count
            else:
                series = _Series(None, str(meta.get("namespace")), 1, 1, now)
                self._series[key] = series
                while len(self._series) > REMEMBERED:
                    self._series.popitem(last=False)
                name, count = None, 1
        if name is None:
            self._create(series, meta, kind, reason, message)
        else:
            self._bump(series.namespace, name, count, reason)

    def _create(
        self, series: _Series, meta: Mapping[str, Any], kind: str, reason: str, message: str
    ) -> None:
        now = _timestamp()
        body = {
            "metadata": {
                "generateName": f"{meta.get('name')}.",
                "namespace": meta.get("namespace"),
            },
            "involvedObject": {
                "kind": "Service",
                "apiVersion": "v1",
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": self.component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            created = self.core.create_namespaced_event(meta.get("namespace"), body)
        except Exception as exc:  # best effort: never fail a reconcile for an Event
            log.debug("event %s for %s not recorded: %s", reason, meta.get("name"), exc)
            return
        self.created += 1
        name = _name_of(created)
        with self._lock:
            series.name = name

    def _bump(self, namespace: str, name: str, count: int, reason: str) -> None:
        patch = {"count": count, "lastTimestamp": _timestamp()}
        try:
            self.core.patch_namespaced_event(name, namespace, patch)
        except Exception as exc:  # best effort, as above
            log.debug("event %s (%s) not updated: %s", name, reason, exc)
            return
        self.patched += 1


def _name_of(created: Any) -> str | None:
    """The created Event's name, from the client's model or a plain dict."""
    meta = created.get("metadata") if isinstance(created, dict) else created.metadata
    name = meta.get("name") if isinstance(meta, dict) else getattr(meta, "name", None)
    return str(name) if name else None
