"""Prometheus metrics of an agent: Raft health, state sizes, commit latency, announcers.

Gauges, and the running totals other parts count (the announcers'), are read at scrape time by
custom collectors, so they are never stale and cost the hot paths nothing; the commit-latency
histogram is fed by `Metrics.submit`, the one path every write takes.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from announce.l2_logic import STATS
from appliance.model import Backend
from raft.cluster import Cluster, SubmitError
from raft.commands import Command

COMMAND_BUCKETS = (
    5e-05,
    1e-4,
    2e-4,
    3e-4,
    5e-4,
    7.5e-4,
    1e-3,
    1.5e-3,
    2e-3,
    3e-3,
    5e-3,
    0.01,
    0.05,
)


class _ClusterCollector(Collector):
    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self._cluster.status()
        state = self._cluster.view()
        yield GaugeMetricFamily("raftlb_raft_term", "Current Raft term", value=status.term)
        yield GaugeMetricFamily(
            "raftlb_raft_commit_index", "Raft commit index", value=status.commit_index
        )
        yield GaugeMetricFamily(
            "raftlb_raft_last_applied", "Last Raft entry applied here", value=status.last_applied
        )
        yield GaugeMetricFamily(
            "raftlb_raft_is_leader",
            "1 if this node is the Raft leader",
            value=1 if status.role == "leader" else 0,
        )
        yield GaugeMetricFamily(
            "raftlb_raft_has_leader",
            "1 if this node knows a Raft leader",
            value=1 if status.leader else 0,
        )
        yield GaugeMetricFamily(
            "raftlb_raft_has_quorum",
            "1 if this node reaches a majority",
            value=1 if status.has_quorum else 0,
        )
        leader = GaugeMetricFamily(
            "raftlb_raft_leader", "1 for the node this node believes leads", labels=["node"]
        )
        if status.leader:
            leader.add_metric([status.leader], 1)
        yield leader
        members = GaugeMetricFamily(
            "raftlb_members_connected",
            "Raft connection to each member (1 up, 0 down)",
            labels=["node"],
        )
        for node, up in sorted(status.connected.items()):
            members.add_metric([node], 1 if up else 0)
        yield members
        yield GaugeMetricFamily("raftlb_members", "Configured members", value=len(status.connected))
        yield GaugeMetricFamily("raftlb_pools", "Address pools", value=len(state.pools))
        yield GaugeMetricFamily("raftlb_services", "Services", value=len(state.services))
        yield GaugeMetricFamily(
            "raftlb_allocations", "Address allocations", value=len(state.allocations)
        )
        yield GaugeMetricFamily(
            "raftlb_vips", "Distinct allocated addresses", value=len(state.by_address)
        )
        yield GaugeMetricFamily(
            "raftlb_gc_frozen_objects",
            "Objects moved out of the garbage collector's reach (appliance.gcpolicy)",
            value=gc.get_freeze_count(),
        )


class HealthView(Protocol):
    def healthy(self, service_id: str, backend: Backend) -> bool: ...


class _HealthCollector(Collector):
    def __init__(self, health: HealthView, cluster: Cluster) -> None:
        self._health = health
        self._cluster = cluster

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._cluster.view()
        backend = GaugeMetricFamily(
            "raftlb_backend_healthy",
            "1 if this node's health checks find the backend up",
            labels=["service", "backend"],
        )
        vips = GaugeMetricFamily(
            "raftlb_vip_healthy_backends",
            "Backends of the VIP's services that this node finds up (0: it rejects clients)",
            labels=["vip"],
        )
        per_vip: dict[str, int] = {}
        for service in state.services.values():
            vip = str(service.address)
            per_vip.setdefault(vip, 0)
            for port in service.spec.ports:
                for b in port.backends:
                    up = self._health.healthy(service.spec.id, b)
                    backend.add_metric([service.spec.id, f"{b.address}:{b.port}"], float(up))
                    if b.address.version == service.address.version:
                        per_vip[vip] += up
        for vip, count in sorted(per_vip.items()):
            vips.add_metric([vip], float(count))
        yield backend
        yield vips


class _BgpCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        sessions = GaugeMetricFamily(
            "raftlb_bgp_session_up", "1 while the BGP session with the peer is up", labels=["peer"]
        )
        for peer, state in sorted(status.get("peers", {}).items()):
            sessions.add_metric([peer], float(state == "up"))
        yield sessions
        yield GaugeMetricFamily(
            "raftlb_bgp_routes_announced",
            "VIP routes this node announces now",
            value=len(status.get("routes", [])),
        )
        yield GaugeMetricFamily(
            "raftlb_bgp_announcing",
            "1 while exabgp runs and takes commands (0: this node announces nothing)",
            value=float(bool(status.get("announcing"))),
        )
        # Running totals are Counters: `increase()` works and an agent restart is a reset.
        yield CounterMetricFamily(
            "raftlb_bgp_exabgp_restarts",
            "Times exabgp died and was restarted",
            value=status.get("restarts", 0),
        )
        yield CounterMetricFamily(
            "raftlb_bgp_command_errors",
            "Route commands exabgp refused",
            value=status.get("errors", 0),
        )
        refreshes = CounterMetricFamily(
            "raftlb_bgp_route_refreshes",
            "Route refresh requests from the peer (it re-read this node's routes)",
            labels=["peer"],
        )
        for peer, session in sorted(status.get("sessions", {}).items()):
            refreshes.add_metric([peer], session.get("refreshes", 0))
        yield refreshes
        bfd = status.get("bfd")
        if bfd is not None:
            up = GaugeMetricFamily(
                "raftlb_bfd_session_up",
                "1 while the BFD session with the peer is up",
                labels=["peer"],
            )
            for peer, session in sorted(bfd.get("peers", {}).items()):
                up.add_metric([peer], float(session.get("status") == "up"))
            yield up
            yield CounterMetricFamily(
                "raftlb_bfd_restarts",
                "Times the BFD daemon (BIRD) died and was restarted",
                value=bfd["restarts"],
            )


class _L2Collector(Collector):
    """The layer-2 announcer's counters (announce.l2_logic.STATS), read at scrape time: the
    announcer only adds to a dict under its lock, whatever is scraped."""

    def __init__(self, interface: str, stats: Callable[[], dict[str, int]]) -> None:
        self._interface = interface
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for key, text in STATS.items():
            family = CounterMetricFamily(f"raftlb_l2_{key}", text, labels=["interface"])
            family.add_metric([self._interface], stats.get(key, 0))
            yield family
        held = GaugeMetricFamily(
            "raftlb_l2_vips_held", "VIPs the announcer answers for now", labels=["interface"]
        )
        held.add_metric([self._interface], stats.get("held", 0))
        yield held


class Metrics:
    """The registry of one agent and the write path that records commit latency."""

    def __init__(self, cluster: Cluster) -> None:
        self.registry = CollectorRegistry()
        self._cluster = cluster
        self.registry.register(_ClusterCollector(cluster))
        self.commit_seconds = Histogram(
            "raftlb_commit_seconds",
            "Time from submitting a command to its commit being seen here",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )
        fine = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)
        self.apply_seconds = Histogram(
            "raftlb_raft_apply_seconds",
            "Time to apply one committed entry to the state (on the Raft tick thread)",
            ["command"],
            buckets=fine,
            registry=self.registry,
        )
        self.apply_command_seconds = Histogram(
            "raftlb_raft_apply_command_seconds",
            "Time to apply one command (an entry's time divided by the commands of its batch)",
            buckets=COMMAND_BUCKETS,
            registry=self.registry,
        )
        self.tick_lag_seconds = Histogram(
            "raftlb_raft_tick_lag_seconds",
            "How late the Raft tick thread ran its ticks behind schedule (starved or busy)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.journal_sync_seconds = Histogram(
            "raftlb_raft_journal_sync_seconds",
            "Time of one Raft journal sync to disk (the Raft tick waits for it)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "raftlb_reconcile_seconds",
            "Time of one reconcile pass (announcer, BGP, data plane, acknowledgements)",
            buckets=fine,
            registry=self.registry,
        )
        self.plan_seconds = Histogram(
            "raftlb_plan_seconds",
            "Time the leader took to decide VIP owners in one pass",
            buckets=fine,
            registry=self.registry,
        )
        self.ruleset_seconds = Histogram(
            "raftlb_ruleset_update_seconds",
            "Time to change the nftables ruleset: by delta or by a full load",
            ["kind"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )
        self.submit_failures = Counter(
            "raftlb_submit_failures_total",
            "Commands not committed, by reason",
            ["reason"],
            registry=self.registry,
        )

        self.takeovers = Counter(
            "raftlb_vip_takeovers_total",
            "VIPs this node started answering for, by why they changed owner (resumed: held "
            "again under the same assignment once this node's lease was valid again)",
            ["reason"],
            registry=self.registry,
        )
        self.failover_seconds = Histogram(
            "raftlb_failover_seconds",
            "VIPs taken over from a dead owner: from the last renewal the leader saw of the "
            "old owner to this node answering (not a VIP taken back after a lapsed lease)",
            buckets=(0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 5, 10),
            registry=self.registry,
        )

    async def submit(self, command: Command, timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        try:
            result = await self._cluster.submit(command, timeout)
        except SubmitError as exc:
            self.submit_failures.labels(exc.code).inc()
            raise
        self.commit_seconds.observe(time.monotonic() - started)
        return result

    def applied(self, seconds: float, kind: str, commands: int) -> None:
        """An entry was applied (called on the Raft tick thread: cheap and lock-light)."""
        self.apply_seconds.labels(kind or "?").observe(seconds)
        self.apply_command_seconds.observe(seconds / max(1, commands))

    def watch_bgp(self, status: Callable[[], dict[str, Any]]) -> None:
        """Export the BGP announcer's sessions and routes (announce.bgp) at scrape time."""
        self.registry.register(_BgpCollector(status))

    def watch_l2(self, interface: str, stats: Callable[[], dict[str, int]]) -> None:
        """Export the layer-2 announcer's counters (announce.l2) at scrape time."""
        self.registry.register(_L2Collector(interface, stats))

    def watch_health(self, health: HealthView, cluster: Cluster) -> None:
        """Export this node's backend health (appliance.health) at scrape time."""
        self.registry.register(_HealthCollector(health, cluster))

    def render(self) -> bytes:
        return generate_latest(self.registry)
