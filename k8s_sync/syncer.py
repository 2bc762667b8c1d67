"""The sync loop: informers feed a work queue keyed by Service; each key is reconciled alone.

For a key `namespace/name`: translate the Service (with its EndpointSlices and the Nodes) into
ServiceSpecs, PUT what changed and DELETE what this cluster no longer wants through the
appliance's API, patch `status.loadBalancer.ingress` with the addresses the appliance gave, and
record Events (allocated, failed with the reason, released, invalid configuration). A key that
fails is retried with backoff without holding up the others. At start and every `resync`
seconds every key is reconciled again, including this cluster's ids that exist only in the
appliance (Services deleted while the sync was down).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from appliance.client import ApiClient, ApiError, ApiUnreachable
from appliance.model import Service
from k8s_sync.informer import Informer, object_key
from k8s_sync.plan import ingress_patch, owned, plan
from k8s_sync.translate import (
    SERVICE_NAME_LABEL,
    Options,
    TranslationError,
    id_prefix,
    translate,
    wanted,
)

log = logging.getLogger("raftlb.k8s")
COMPONENT = "raftlb-k8s-sync"


class WorkQueue:
    """Keys to reconcile: each key at most once in the queue and in one worker at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[str, float] = {}  # key -> not before (monotonic)
        self._busy: set[str] = set()

    def add(self, key: str, delay: float = 0.0) -> None:
        with self._cond:
            at = time.monotonic() + delay
            self._pending[key] = min(self._pending.get(key, at), at)
            self._cond.notify_all()

    def get(self, stop: threading.Event) -> str | None:
        with self._cond:
            while not stop.is_set():
                now = time.monotonic()
                ready = [k for k, at in self._pending.items() if at <= now and k not in self._busy]
                if ready:
                    key = min(ready, key=lambda k: self._pending[k])
                    del self._pending[key]
                    self._busy.add(key)
                    return key
                later = [at - now for k, at in self._pending.items() if k not in self._busy]
                self._cond.wait(min([0.5, *later]))
            return None

    def done(self, key: str) -> None:
        with self._cond:
            self._busy.discard(key)
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)


class Syncer:
    @classmethod
    def for_url(cls, url: str, appliance: ApiClient, options: Options, **kwargs: Any) -> Syncer:
        """A syncer for the API server at `url` without credentials (tests, the lab)."""
        from kubernetes import client

        kube = client.ApiClient(client.Configuration(host=url))
        return cls(
            client.CoreV1Api(kube), client.DiscoveryV1Api(kube), appliance, options, **kwargs
        )

    def __init__(
        self,
        core: Any,
        discovery: Any,
        appliance: ApiClient,
        options: Options,
        resync: float = 300.0,
        workers: int = 2,
    ) -> None:
        self.core = core
        self.appliance = appliance
        self.options = options
        self.resync = resync
        self.workers = workers
        self.queue = WorkQueue()
        self.services = Informer("services", core.list_service_for_all_namespaces, self._on_service)
        self.slices = Informer(
            "endpointslices", discovery.list_endpoint_slice_for_all_namespaces, self._on_slice
        )
        self.nodes = Informer("nodes", core.list_node, self._on_node)
        self.reconciled = 0
        self.failures = 0
        self._deleted: dict[str, dict[str, Any]] = {}

    # --- events in ---------------------------------------------------------------------------

    def _on_service(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":  # kept to hang the "released" event on
            self._deleted[object_key(obj)] = obj
        self.queue.add(object_key(obj))

    def _on_slice(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if name:
            self.queue.add(f"{meta.get('namespace')}/{name}")

    def _on_node(self, kind: str, obj: dict[str, Any]) -> None:
        for service in self.services.snapshot():
            if wanted(service, self.options):
                self.queue.add(object_key(service))

    def resync_all(self) -> None:
        """Every Service known, and every id of this cluster in the appliance."""
        keys = {object_key(s) for s in self.services.snapshot()}
        for service in self.appliance.services():
            sid = service.spec.id
            if owned(self.options.cluster, sid):
                namespace, name = sid.split("/", 1)[1].rsplit(":", 1)[0].split("/", 1)
                keys.add(f"{namespace}/{name}")
        for key in keys:
            self.queue.add(key)

    # --- reconciling one key -----------------------------------------------------------------

    def reconcile(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        prefix = id_prefix(self.options.cluster, namespace, name) + ":"
        existing = {}
        for family in ("ipv4", "ipv6"):  # by id: listing every service per key is O(n^2)
            try:
                found = self.appliance.service(prefix + family)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                continue
            existing[found.spec.id] = found
        service = self.services.get(key)
        desired = {}
        if service is not None and wanted(service, self.options):
            slices = [
                s
                for s in self.slices.snapshot()
                if (s.get("metadata") or {}).get("namespace") == namespace
                and ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL) == name
            ]
            try:
                specs = translate(service, slices, self.nodes.snapshot(), self.options)
            except TranslationError as exc:
                self._event(service, "Warning", "InvalidConfiguration", str(exc))
                log.warning("%s: not applied: %s", key, exc)
                return  # nothing applied: the previous state stays
            desired = {s.id: s for s in specs}
        changes = plan(self.options.cluster, desired, existing)
        applied: dict[str, Service] = {sid: s for sid, s in existing.items() if sid in desired}
        for spec in changes.puts:
            try:
                result = self.appliance.put_service(spec)
            except ApiError as exc:
                if service is not None and exc.status in (409, 422):
                    self._event(service, "Warning", "AllocationFailed", exc.message)
                    log.warning("%s: %s", spec.id, exc)
                    continue
                raise
            new_address = spec.id not in existing or existing[spec.id].address != result.address
            if new_address and service is not None:
                self._event(service, "Normal", "IPAllocated", f"{result.address} ({spec.id})")
            applied[spec.id] = result
        subject = service or self._deleted.pop(key, None)
        for sid in changes.deletes:
            self.appliance.delete_service(sid)
            if subject is not None:
                self._event(subject, "Normal", "IPReleased", f"{existing[sid].address} ({sid})")
            log.info("%s: released %s", key, existing[sid].address)
        if service is not None and wanted(service, self.options):
            self._patch_status(service, list(applied.values()))
        self.reconciled += 1

    def _patch_status(self, service: dict[str, Any], applied: list[Service]) -> None:
        body = ingress_patch(applied)
        current = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        wanted_ingress = body["status"]["loadBalancer"]["ingress"]
        if [i.get("ip") for i in current] == [i["ip"] for i in wanted_ingress]:
            return
        meta = service["metadata"]
        self.core.patch_namespaced_service_status(meta["name"], meta["namespace"], body)

    def _event(self, service: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = service.get("metadata") or {}
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
            "message": message[:1000],
            "source": {"component": COMPONENT},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta.get("namespace"), body)
        except Exception as exc:  # an event is best effort: never fail a reconcile for it
            log.debug("event %s for %s not recorded: %s", reason, meta.get("name"), exc)

    # --- running -----------------------------------------------------------------------------

    def _work(self, stop: threading.Event) -> None:
        backoff: dict[str, float] = {}
        while not stop.is_set():
            key = self.queue.get(stop)
            if key is None:
                return
            try:
                self.reconcile(key)
                backoff.pop(key, None)
            except (ApiError, ApiUnreachable, OSError) as exc:
                self.failures += 1
                delay = backoff[key] = min(backoff.get(key, 0.25) * 2, 30.0)
                log.warning("%s: sync failed (%s); retrying in %.1fs", key, exc, delay)
                self.queue.add(key, delay)
            finally:
                self.queue.done(key)

    def run(self, stop: threading.Event, ready: Callable[[], None] = lambda: None) -> None:
        threads = [
            threading.Thread(target=i.run, args=(stop,), name=f"informer-{i.name}", daemon=True)
            for i in (self.services, self.slices, self.nodes)
        ]
        for thread in threads:
            thread.start()
        for informer in (self.services, self.slices, self.nodes):
            while not informer.synced.wait(0.5):
                if stop.is_set():
                    return
        log.info("informers synced: reconciling every Service")
        workers = [
            threading.Thread(target=self._work, args=(stop,), name=f"sync-{n}", daemon=True)
            for n in range(self.workers)
        ]
        for worker in workers:
            worker.start()
        ready()
        while not stop.is_set():
            try:
                self.resync_all()
            except (ApiError, ApiUnreachable, OSError) as exc:
                log.warning("full resync failed (%s); trying again later", exc)
            stop.wait(self.resync)
        for informer in (self.services, self.slices, self.nodes):
            informer.stop()
        for thread in [*threads, *workers]:
            thread.join(5)
