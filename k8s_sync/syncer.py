"""The sync loop: informers feed a work queue keyed by Service; keys are reconciled in batches.

For each key `namespace/name`: translate the Service (with its EndpointSlices and the Nodes) into
ServiceSpecs, put what changed and delete what this cluster no longer wants in the appliance,
patch `status.loadBalancer.ingress` with the addresses the appliance gave, and record Events
(allocated, failed with the reason, released, invalid configuration). A worker takes every
ready key at once (up to `batch`): their writes go to the appliance in a few `/v1/apply`
requests (k8s_sync.writer) and their status patches run concurrently (`concurrency`), so a
cold start with thousands of Services costs seconds, not a request round trip per Service.
A key that fails is retried with backoff without holding up the others. At start and every
`resync` seconds every key is reconciled again, including this cluster's ids that exist only in
the appliance (Services deleted while the sync was down).

A Service stops being ours when it is deleted (its deletionTimestamp is set), its type or class
changes: its addresses are taken out of its status first, then released in the appliance. With
`finalizer` (the default, as cloud controllers do) a Service given an address carries the
finalizer `service.kubernetes.io/load-balancer-cleanup`, removed only after the release: a
Service deleted while the sync was down stays Terminating until the sync has released its VIP,
so no VIP outlives its Service.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from appliance.apierror import ApiError
from appliance.backoff import Backoff
from appliance.client import ApiClient, ApiUnreachable
from appliance.model import Service
from k8s_sync.events import EventRecorder
from k8s_sync.informer import Informer, object_key
from k8s_sync.owners import ANNOTATION, Move, OwnerTracker
from k8s_sync.plan import Plan, Stored, ingress_patch, owned, plan
from k8s_sync.translate import (
    SERVICE_NAME_LABEL,
    Options,
    TranslationError,
    id_prefix,
    translate,
    wanted,
)
from k8s_sync.writer import Outcome, Writer

log = logging.getLogger("raftlb.k8s")
COMPONENT = "raftlb-k8s-sync"
RETRY = Backoff(first=0.5, cap=30.0)  # the wait before reconciling a failed Service again
# Status patches and Events in flight at once (and the Kubernetes client's connection pool).
CONCURRENCY = 16
# The finalizer the cloud service controllers use for the same guarantee.
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"


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

    def get_many(self, stop: threading.Event, limit: int) -> list[str]:
        """Every ready key (up to `limit`), oldest first; waits for at least one."""
        first = self.get(stop)
        if first is None:
            return []
        keys = [first]
        with self._cond:
            now = time.monotonic()
            ready = sorted(
                (at, k) for k, at in self._pending.items() if at <= now and k not in self._busy
            )
            for _, key in ready[: limit - 1]:
                del self._pending[key]
                self._busy.add(key)
                keys.append(key)
        return keys

    def done(self, key: str) -> None:
        with self._cond:
            self._busy.discard(key)
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    def idle(self) -> bool:
        """Nothing waiting and nothing being worked on."""
        with self._cond:
            return not self._pending and not self._busy


class Known:
    """This cluster's services in the appliance as the sync last saw them: listed at every full
    resync, then kept up to date with what the sync writes (each key is written by one worker
    at a time). A change made by someone else shows at the key's next small reconcile (asked by
    id) or the next resync; what it could cause meanwhile is a PUT or DELETE done again, which
    the appliance answers as before (IPAM is idempotent by id, a delete of a gone id is done)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[str, Stored] = {}
        self.loaded = False

    def replace(self, services: dict[str, Stored]) -> None:
        with self._lock:
            self._services, self.loaded = dict(services), True

    def services(self) -> dict[str, Stored]:
        with self._lock:
            return dict(self._services)

    def put(self, service: Stored) -> None:
        with self._lock:
            self._services[service.id] = service

    def drop(self, sid: str) -> None:
        with self._lock:
            self._services.pop(sid, None)


class Syncer:
    @classmethod
    def for_url(cls, url: str, appliance: ApiClient, options: Options, **kwargs: Any) -> Syncer:
        """A syncer for the API server at `url` without credentials (tests, the lab)."""
        from kubernetes import client

        configuration = client.Configuration(host=url)
        configuration.connection_pool_maxsize = kwargs.get("concurrency", CONCURRENCY) + 2
        kube = client.ApiClient(configuration)
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
        batch: int = 1000,
        concurrency: int = CONCURRENCY,
        event_interval: float = 300.0,
        owner_interval: float = 5.0,
    ) -> None:
        self.core = core
        self.appliance = appliance
        self.options = options
        self.resync = resync
        self.workers = workers
        self.batch = batch
        self.queue = WorkQueue()
        self.services = Informer("services", core.list_service_for_all_namespaces, self._on_service)
        self.slices = Informer(
            "endpointslices",
            discovery.list_endpoint_slice_for_all_namespaces,
            self._on_slice,
            index=_slice_service,
        )
        self.nodes = Informer("nodes", core.list_node, self._on_node)
        self.writer = Writer(appliance)
        self.known = Known()
        # Status patches and Events, concurrently (the kubernetes client is thread-safe).
        self.pool = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="k8s")
        self.events = EventRecorder(core, COMPONENT, interval=event_interval)
        self.owner_interval = owner_interval
        self.owners = OwnerTracker(self._annotate, self._moved)
        self.reconciled = 0
        self.failures = 0
        self._deleted: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, str] = {}  # key -> what of the Service a reconcile depends on
        # Services given a VIP that still lack the finalizer (added once a cold start drained).
        self._unfinalized: set[str] = set()
        self._lock = threading.Lock()
        self._cold = True

    # --- events in ---------------------------------------------------------------------------

    def _on_service(self, kind: str, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        if kind == "DELETED":  # kept to hang the "released" event on
            self._deleted[key] = obj
            self._seen.pop(key, None)
        else:
            # Our own annotation and finalizer patches come back as MODIFIED: they change
            # nothing a reconcile reads, and reconciling every Service again for them doubled
            # a cold start's work.
            seen = _relevant(obj)
            if kind == "MODIFIED" and self._seen.get(key) == seen:
                return
            self._seen[key] = seen
        self.queue.add(key)

    def _on_slice(self, kind: str, obj: dict[str, Any]) -> None:
        key = _slice_service(obj)
        if key:
            self.queue.add(key)

    def _on_node(self, kind: str, obj: dict[str, Any]) -> None:
        for service in self.services.snapshot():
            if wanted(service, self.options):
                self.queue.add(object_key(service))

    def resync_all(self) -> None:
        """Every Service known, and every id of this cluster in the appliance."""
        keys = {object_key(s) for s in self.services.snapshot()}
        for sid in self._list_owned():
            keys.add(_key_of(sid))
        for key in keys:
            self.queue.add(key)

    def _resync_or_log(self) -> None:
        try:
            self.resync_all()
        except (ApiError, ApiUnreachable, OSError) as exc:
            log.warning(
                "full resync failed (%s); the Services queued are synced as they come, the "
                "next full resync is in %.0f s",
                exc,
                self.resync,
            )

    # --- reconciling keys ----------------------------------------------------------------------

    def reconcile(self, key: str) -> None:
        """Reconcile one key (see `reconcile_many`)."""
        self.reconcile_many([key])

    def reconcile_many(self, keys: list[str]) -> None:
        """Translate, plan, write (batched) and report (concurrently) every key. Raises on
        failures that a retry may cure (the appliance or the Kubernetes API unreachable)."""
        existing = self._existing(keys)
        nodes = self.nodes.snapshot()
        work: list[tuple[str, dict[str, Any] | None, dict[str, Stored], Plan]] = []
        for key in keys:
            service = self.services.get(key)
            desired = {}
            if service is not None and self._ours(service):
                try:
                    specs = translate(service, self.slices.indexed(key), nodes, self.options)
                except TranslationError as exc:
                    self._event(service, "Warning", "InvalidConfiguration", str(exc))
                    log.warning("%s: not applied: %s", key, exc)
                    continue  # nothing applied: the previous state stays
                desired = {s.id: s for s in specs}
            elif service is not None and existing[key]:
                # No longer ours: its status gives the addresses up before they are released,
                # so no Service shows an address the appliance may give to another.
                self._clear_status(service, {str(s.address) for s in existing[key].values()})
            work.append(
                (key, service, existing[key], plan(self.options.cluster, desired, existing[key]))
            )
        outcomes = self.writer.write((key, p) for key, _, _, p in work if p)
        for outcome in outcomes.values():
            for stored in outcome.applied.values():
                self.known.put(Stored.of(stored))
            for sid in outcome.deleted:
                self.known.drop(sid)
        reports = [
            self.pool.submit(self._report, key, service, found, changes, outcomes.get(key))
            for key, service, found, changes in work
        ]
        errors = [f.exception() for f in reports if f.exception() is not None]
        self.reconciled += len(work)
        if errors:
            raise errors[0]  # type: ignore[misc]

    def _existing(self, keys: list[str]) -> dict[str, dict[str, Stored]]:
        """This cluster's services in the appliance, per key: asked by id for a few keys, else
        as last listed and written (a GET per key would be two requests per Service at a cold
        start, and a listing per batch of 5,000 services parsed 50,000 backends each time)."""
        out: dict[str, dict[str, Stored]] = {key: {} for key in keys}
        prefixes = {id_prefix(self.options.cluster, *key.split("/", 1)) + ":": key for key in keys}
        if len(keys) > 8:
            known = self.known.services() if self.known.loaded else self._list_owned()
            for sid, service in known.items():
                key = prefixes.get(sid.rsplit(":", 1)[0] + ":")
                if key is not None:
                    out[key][sid] = service
            return out
        for prefix, key in prefixes.items():
            for family in ("ipv4", "ipv6"):
                sid = prefix + family
                try:
                    found = self.appliance.service(sid)
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    self.known.drop(sid)
                    continue
                out[key][sid] = Stored.of(found)
                self.known.put(out[key][sid])
        return out

    def _list_owned(self) -> dict[str, Stored]:
        """Every service of this cluster in the appliance (and remember them)."""
        cluster = self.options.cluster
        listed = self.appliance.each_service(where=lambda sid: owned(cluster, sid))
        found = {s.spec.id: Stored.of(s) for s in listed}
        self.known.replace(found)
        return found

    def _report(
        self,
        key: str,
        service: dict[str, Any] | None,
        existing: dict[str, Stored],
        changes: Plan,
        outcome: Outcome | None,
    ) -> None:
        """Events and the status patch of one key, after its writes."""
        outcome = outcome or Outcome()
        applied: dict[str, Stored | Service] = {
            sid: s for sid, s in existing.items() if sid not in changes.deletes
        }
        for sid, reason in outcome.refused:
            if service is not None:
                self._event(service, "Warning", "AllocationFailed", reason)
            log.warning("%s: %s", sid, reason)
        for sid, result in outcome.applied.items():
            new_address = sid not in existing or existing[sid].address != result.address
            if new_address and service is not None:
                self._event(service, "Normal", "IPAllocated", f"{result.address} ({sid})")
            applied[sid] = result
        subject = service or self._deleted.pop(key, None)
        for sid in outcome.deleted:
            if subject is not None:
                self._event(subject, "Normal", "IPReleased", f"{existing[sid].address} ({sid})")
            log.info("%s: released %s", key, existing[sid].address)
        if service is None:
            return
        if self._ours(service):
            self._patch_status(service, list(applied.values()))
            if applied:
                self._affinity_note(service)
                self._finalize_later(key)
        elif not any(sid not in outcome.deleted for sid in existing):
            self._set_finalizer(service, False)  # nothing of it left in the appliance

    def _ours(self, service: dict[str, Any]) -> bool:
        """Handled by this sync and not being deleted."""
        meta = service.get("metadata") or {}
        return wanted(service, self.options) and not meta.get("deletionTimestamp")

    def _set_finalizer(self, service: dict[str, Any], present: bool) -> None:
        """Add or remove our finalizer (strategic merge patches: neither depends on the list's
        other entries, so no read-modify-write race with other controllers)."""
        meta = service.get("metadata") or {}
        has = FINALIZER in (meta.get("finalizers") or [])
        if has == present or (present and not self.options.finalizer):
            return
        if present:
            patch: dict[str, Any] = {"metadata": {"finalizers": [FINALIZER]}}
        else:
            patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": [FINALIZER]}}
        self.core.patch_namespaced_service(meta["name"], meta["namespace"], patch)
        verb = "added" if present else "removed"
        log.info("%s/%s: finalizer %s %s", meta["namespace"], meta["name"], FINALIZER, verb)

    def _clear_status(self, service: dict[str, Any], addresses: set[str]) -> None:
        """Take `addresses` (ours) out of the Service's ingress; another controller's stay."""
        current = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        kept = [i for i in current if i.get("ip") not in addresses]
        if len(kept) == len(current):
            return
        meta = service["metadata"]
        body = {"status": {"loadBalancer": {"ingress": kept or None}}}
        self.core.patch_namespaced_service_status(meta["name"], meta["namespace"], body)

    def _affinity_note(self, service: dict[str, Any]) -> None:
        """ClientIP affinity is kept by hashing the source address: as long as the backends
        stay the same, with no timeout. Said once (the recorder aggregates)."""
        spec = service.get("spec") or {}
        if spec.get("sessionAffinity") != "ClientIP":
            return
        config = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        timeout = config.get("timeoutSeconds", 10800)
        self._event(
            service,
            "Normal",
            "SessionAffinity",
            "sessionAffinity ClientIP is kept by source-address hashing: a client stays with "
            f"its backend while the backends stay the same; timeoutSeconds ({timeout}) is not "
            "applied",
        )

    def _patch_status(self, service: dict[str, Any], applied: list[Stored | Service]) -> None:
        body = ingress_patch(applied)
        current = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        wanted_ingress = body["status"]["loadBalancer"]["ingress"]
        if [i.get("ip") for i in current] == [i["ip"] for i in wanted_ingress]:
            return
        meta = service["metadata"]
        self.core.patch_namespaced_service_status(meta["name"], meta["namespace"], body)

    def _event(self, service: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.events.record(service, kind, reason, message)

    # --- where the VIPs are answered -----------------------------------------------------------

    def track_owners(self) -> None:
        """One poll of the appliance's VIPs for the annotation and the move Events."""
        vips = self.appliance.vips()
        addresses: dict[str, list[str]] = {}
        for sid, stored in self.known.services().items():
            addresses.setdefault(_key_of(sid), []).append(str(stored.address))
        ours: dict[str, tuple[dict[str, Any], list[str]]] = {}
        for key, found in addresses.items():
            service = self.services.get(key)
            if service is not None and self._ours(service):
                ours[key] = (service, found)
        self.owners.poll(vips, ours)

    def _annotate(self, service: Any, value: str) -> None:
        meta = service["metadata"]
        patch = {"metadata": {"annotations": {ANNOTATION: value}}}
        self.core.patch_namespaced_service(meta["name"], meta["namespace"], patch)

    def _moved(self, move: Move, service: Any) -> None:
        self._event(service, move.kind, move.reason, move.message)

    def _finalize_later(self, key: str) -> None:
        """Our finalizer for `key`: at once, except during a cold start, when addresses go
        into statuses first (a patch per Service beside them made 1,000 Services' cold sync
        take 2-3 s longer); the background loop adds it as soon as the queue has drained.
        Meanwhile a deletion is still seen and released, as without the finalizer."""
        with self._lock:
            if self._cold:
                self._unfinalized.add(key)
                return
        self._add_finalizer(key)

    def _add_finalizer(self, key: str) -> None:
        service = self.services.get(key)
        if service is not None and self._ours(service):
            self._set_finalizer(service, True)

    def _background(self, stop: threading.Event) -> None:
        """After the cold start: the finalizers it deferred, then the VIP owners' annotations
        and move Events every `owner_interval` seconds."""
        while not self.queue.idle():
            if stop.wait(0.2):
                return
        with self._lock:  # from now on finalizers are added at once (_finalize_later)
            self._cold = False
            deferred, self._unfinalized = self._unfinalized, set()
        for key in sorted(deferred):
            try:
                self._add_finalizer(key)
            except Exception as exc:  # the next reconcile of the key adds it
                log.warning("%s: finalizer not added (%s); added at its next reconcile", key, exc)
        if self.owner_interval <= 0:
            return
        while not stop.wait(self.owner_interval):
            try:
                self.track_owners()
            except (ApiError, ApiUnreachable, OSError) as exc:
                wait = self.owner_interval
                log.debug("VIP owners not read (%s); trying again in %.0f s", exc, wait)

    # --- running -----------------------------------------------------------------------------

    def _work(self, stop: threading.Event) -> None:
        failures: dict[str, int] = {}  # by key: failed reconciles in a row
        while not stop.is_set():
            keys = self.queue.get_many(stop, self.batch)
            if not keys:
                return
            try:
                self.reconcile_many(keys)
                for key in keys:
                    failures.pop(key, None)
            except Exception as exc:  # the appliance, the Kubernetes API, the network
                self.failures += 1
                # A batch waits as long as its key that failed most often.
                count = max(failures.get(k, 0) for k in keys) + 1
                delay = RETRY.delay(count)
                for key in keys:
                    failures[key] = count
                    self.queue.add(key, delay)
                log.warning(
                    "%d Service(s) (%s...) not synced (%s); retrying in %.1fs",
                    len(keys),
                    keys[0],
                    exc,
                    delay,
                )
            finally:
                for key in keys:
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
        # Listed before the workers start, so that their first batches use this listing.
        self._resync_or_log()
        workers = [
            threading.Thread(target=self._work, args=(stop,), name=f"sync-{n}", daemon=True)
            for n in range(self.workers)
        ]
        workers.append(
            threading.Thread(target=self._background, args=(stop,), name="after-cold", daemon=True)
        )
        for worker in workers:
            worker.start()
        ready()
        while not stop.wait(self.resync):
            self._resync_or_log()
        for informer in (self.services, self.slices, self.nodes):
            informer.stop()
        for thread in [*threads, *workers]:
            thread.join(5)
        self.pool.shutdown(wait=False, cancel_futures=True)


def _relevant(service: dict[str, Any]) -> str:
    """What of a Service its reconcile reads: spec, status, deletion and every annotation but
    the one this sync writes (labels, finalizers, managedFields... are not read)."""
    meta = service.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != ANNOTATION}
    text = json.dumps(
        [service.get("spec"), service.get("status"), meta.get("deletionTimestamp"), annotations],
        sort_keys=True,
        default=str,
    )
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()  # thousands are kept


def _key_of(sid: str) -> str:
    """The Service key (namespace/name) of an id `cluster/namespace/name:family`."""
    namespace, name = sid.split("/", 1)[1].rsplit(":", 1)[0].split("/", 1)
    return f"{namespace}/{name}"


def _slice_service(obj: dict[str, Any]) -> str | None:
    """The key (namespace/name) of the Service an EndpointSlice belongs to."""
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return f"{meta.get('namespace')}/{name}" if name else None
