"""Backend health checks run by each agent: a node forwards only to what it can reach itself.

Every agent checks every backend of every service (not only the VIPs it holds), so a node that
takes a VIP over already knows which backends answer. Per service: TCP connect, HTTP GET with an
expected status, or none; interval, timeout, rise and fall from the service's `health_check`.
For `traffic_policy: local` the check is kube-proxy's health check node port: an HTTP GET of
`/healthz` on the backend's node, 200 while that node has a local endpoint.

A backend starts healthy (so a new service forwards at once), leaves after `fall` failed checks
in a row and returns after `rise` good ones. Each change bumps `version`, notes the service
(`take_changed`) and calls `on_change`, which wakes the reconciler: it re-renders that
service's VIP only. The transitions are pure (`Track.record`), unit-tested.

`update` takes the services whose spec changed (from the state's change log), so writing one
service among thousands starts or stops only its checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from appliance.model import (
    Backend,
    HealthCheck,
    HealthCheckType,
    Service,
    TrafficPolicy,
    TransportProtocol,
    address_text,
)

log = logging.getLogger("raftlb.health")

Key = tuple[str, str, int]  # service id, backend address, backend port


@dataclass
class Track:
    """One backend's health as this node sees it."""

    healthy: bool = True
    successes: int = 0
    failures: int = 0
    checks: int = 0
    last_check: float | None = None  # unix time
    reason: str = "not checked yet"
    since: float = field(default_factory=time.time)

    def record(self, ok: bool, reason: str, rise: int, fall: int, now: float) -> bool:
        """Count one check; True when the backend changed state."""
        self.checks += 1
        self.last_check = now
        self.reason = reason
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if not self.healthy and self.successes >= rise:
                self.healthy, self.since = True, now
                return True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.healthy and self.failures >= fall:
                self.healthy, self.since = False, now
                return True
        return False

    def view(self) -> dict[str, object]:
        return {
            "healthy": self.healthy,
            "last_check": self.last_check,
            "reason": self.reason,
            "since": self.since,
            "checks": self.checks,
        }


def target(
    service: Service, backend: Backend, protocol: TransportProtocol = TransportProtocol.TCP
) -> tuple[str, int, HealthCheckType, str]:
    """Where and how to check: (host, port, type, HTTP path).

    A UDP backend answers neither a TCP connect nor an HTTP GET on its port, so it is only
    checked through kube-proxy's node port (local policy), and otherwise counts as healthy.
    """
    spec = service.spec
    check = spec.health_check
    if spec.traffic_policy == TrafficPolicy.LOCAL and spec.health_check_node_port:
        return (
            address_text(backend.address),
            spec.health_check_node_port,
            HealthCheckType.HTTP,
            "/healthz",
        )
    if protocol == TransportProtocol.UDP:
        return address_text(backend.address), backend.port, HealthCheckType.NONE, check.path
    return address_text(backend.address), backend.port, check.type, check.path


async def check_tcp(host: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return False, f"tcp connect timed out after {timeout:g}s"
    except OSError as exc:
        return False, f"tcp connect: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, "tcp connect ok"


async def check_http(
    host: str, port: int, path: str, expected: int, timeout: float
) -> tuple[bool, str]:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def get() -> tuple[bool, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            request = f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n"
            writer.write((request + "User-Agent: raftlb-health\r\n\r\n").encode())
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        parts = status_line.decode(errors="replace").split()
        if len(parts) < 2 or not parts[1].isdigit():
            return False, f"http: not an HTTP answer ({status_line[:40]!r})"
        status = int(parts[1])
        if status != expected:
            return False, f"http GET {path}: status {status}, expected {expected}"
        return True, f"http GET {path}: {status}"

    try:
        return await asyncio.wait_for(get(), timeout)
    except TimeoutError:
        return False, f"http GET {path} timed out after {timeout:g}s"
    except OSError as exc:
        return False, f"http GET {path}: {exc.strerror or exc}"


class HealthChecker:
    """Checks every backend of the services it is given; asyncio, one task per backend."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.on_change = on_change
        self.version = 0
        self.tracks: dict[Key, Track] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._hows: dict[Key, tuple[tuple[str, int, HealthCheckType, str], HealthCheck]] = {}
        self._keys: dict[str, set[Key]] = {}  # service id -> its backends' keys
        self._seen: dict[str, Service] = {}  # service id -> the spec its checks follow
        self._changed: set[str] = set()
        self._versions: dict[str, int] = {}  # service id -> bumped at each health change

    def healthy(self, service_id: str, backend: Backend) -> bool:
        track = self.tracks.get((service_id, address_text(backend.address), backend.port))
        return track is None or track.healthy

    def of_service(self, service_id: str) -> list[dict[str, object]]:
        return [
            {"address": key[1], "port": key[2], **self.tracks[key].view()}
            for key in sorted(self._keys.get(service_id, ()))
            if key in self.tracks
        ]

    def version_of(self, service_id: str) -> int:
        """Changes whenever a backend of the service changes health (or is checked anew)."""
        return self._versions.get(service_id, 0)

    def take_changed(self) -> set[str]:
        """The services whose backends' health changed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    def update(self, services: Mapping[str, Service], only: Iterable[str] | None = None) -> None:
        """Check exactly the backends of `services` (start new checks, stop gone ones); with
        `only`, just those service ids changed since the last update."""
        ids = set(services) | set(self._seen) if only is None else set(only)
        for sid in ids:
            service = services.get(sid)
            if service is self._seen.get(sid):
                continue  # the same (frozen) object: nothing to do
            self._update_service(sid, service)

    def _update_service(self, sid: str, service: Service | None) -> None:
        self._versions[sid] = self._versions.get(sid, 0) + 1  # tracks start over: healthy
        wanted: dict[Key, tuple[Service, Backend, TransportProtocol]] = {}
        if service is not None:
            self._seen[sid] = service
            for port in service.spec.ports:
                for backend in port.backends:
                    wanted[(sid, address_text(backend.address), backend.port)] = (
                        service,
                        backend,
                        port.protocol,
                    )
        else:
            self._seen.pop(sid, None)
            self._versions.pop(sid, None)
        for key in self._keys.get(sid, set()) - set(wanted):
            self._forget(key)
        self._keys[sid] = set(wanted)
        if not wanted:
            self._keys.pop(sid)
        for key, (spec_of, backend, protocol) in wanted.items():
            how = self._how(spec_of, backend, protocol)
            if self._hows.get(key) == how:
                continue
            # New, or checked differently now: start over from a fresh (healthy) track.
            self._forget(key)
            self._hows[key] = how
            if how[0][2] == HealthCheckType.NONE:
                why = (
                    "UDP: no TCP or HTTP check"
                    if protocol == TransportProtocol.UDP
                    else "check: none"
                )
                self.tracks[key] = Track(reason=f"not checked ({why})")
                continue
            self.tracks[key] = Track()
            self._tasks[key] = asyncio.create_task(self._run(key, how), name=f"health {key}")

    def _forget(self, key: Key) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
        self._hows.pop(key, None)
        self.tracks.pop(key, None)

    @staticmethod
    def _how(
        service: Service, backend: Backend, protocol: TransportProtocol
    ) -> tuple[tuple[str, int, HealthCheckType, str], HealthCheck]:
        return (target(service, backend, protocol), service.spec.health_check)

    async def _run(
        self, key: Key, how: tuple[tuple[str, int, HealthCheckType, str], HealthCheck]
    ) -> None:
        (host, port, kind, path), check = how
        while True:
            started = time.monotonic()
            if kind == HealthCheckType.HTTP:
                ok, reason = await check_http(
                    host, port, path, check.expected_status, check.timeout
                )
            else:
                ok, reason = await check_tcp(host, port, check.timeout)
            track = self.tracks.get(key)
            if track is None:
                return
            if track.record(ok, reason, check.rise, check.fall, time.time()):
                self.version += 1
                self._changed.add(key[0])
                self._versions[key[0]] = self._versions.get(key[0], 0) + 1
                log.warning(
                    "backend %s:%d of %s is now %s (%s)%s",
                    host,
                    port,
                    key[0],
                    "healthy" if track.healthy else "DOWN",
                    reason,
                    "" if track.healthy else "; it gets no new connections until it recovers",
                )
                self.on_change()
            await asyncio.sleep(max(0.0, check.interval - (time.monotonic() - started)))

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
