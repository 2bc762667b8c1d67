"""Read-side views of the cluster: pure functions from (state, raft status, peers) to the
answer models of `appliance.bodies`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Set
from typing import Any

from appliance.bodies import (
    BackendCounts,
    BgpInfo,
    DataplaneInfo,
    L2Info,
    RaftInfo,
    Status,
    VipEntry,
)
from appliance.model import Backend, IPAddress, NodeInfo, Service, address_text
from raft.cluster import RaftStatus
from raft.state import StateView


def nodes_view(
    state: StateView,
    status: RaftStatus,
    peers: dict[str, str],
    now: float,
    lease_ages: Mapping[str, float | None] | None = None,
    warming: Set[str] | None = None,
) -> list[NodeInfo]:
    """Every configured member, with what this node knows of it; `warming`: the leader's
    planner's (None elsewhere)."""
    out = []
    for node_id, address in sorted(peers.items()):
        report = state.members.get(node_id)
        if node_id == status.leader:
            role = "leader"
        elif node_id == status.node_id:
            role = status.role
        else:
            role = "follower" if status.leader and status.connected.get(node_id) else "unknown"
        out.append(
            NodeInfo(
                id=node_id,
                raft_address=address,
                api_url=report.api_url if report else None,
                version=report.version if report else None,
                role=role,
                connected=bool(status.connected.get(node_id, node_id == status.node_id)),
                last_report_age=round(max(0.0, now - report.reported_at), 3) if report else None,
                drained=node_id in state.drained,
                lease_age=_rounded((lease_ages or {}).get(node_id)),
                vips=state.vip_counts.get(node_id, 0),
                warming=None if warming is None else node_id in warming,
            )
        )
    return out


def backend_counts(
    services: list[Service], healthy: Callable[[str, Backend], bool]
) -> BackendCounts:
    """Healthy and total backends (of the VIP's address family) over the ports of `services`."""
    up = total = 0
    for service in services:
        family = type(service.address)  # cheaper than .version, asked 50,000 times at size
        sid = service.spec.id
        for port in service.spec.ports:
            for backend in port.backends:
                if type(backend.address) is family:
                    total += 1
                    up += healthy(sid, backend)
    return BackendCounts(healthy=up, total=total)


def vip_entry(
    state: StateView,
    address: IPAddress,
    counts: Callable[[list[Service]], BackendCounts | None],
    announced: set[str] | None = None,
) -> VipEntry:
    """One allocated address: pool, mode, owners, services and their ports, its assignment;
    `counts(services)`: how many of its backends answer (None: not checked here)."""
    owners = sorted(state.by_address[address])
    allocations = [state.allocations[o] for o in owners]
    pool = state.pools.get(allocations[0].pool)
    vip = address_text(address)
    assignment = state.assignments.get(vip)
    ports = sorted(
        {str(p) for a in allocations for p in a.ports},
        key=lambda text: (text.split("/")[1], int(text.split("/")[0])),
    )
    return VipEntry(
        address=vip,
        pool=allocations[0].pool,
        announce=str(pool.announce) if pool else None,
        owners=owners,
        services=[o for o in owners if o in state.services],
        sharing_key=allocations[0].sharing_key,
        ports=ports,
        node=assignment.node if assignment else None,
        epoch=assignment.epoch if assignment else None,
        since=assignment.since if assignment else None,
        releasing=assignment.releasing if assignment else None,
        previous=assignment.previous if assignment else None,
        reason=str(assignment.reason) if assignment and assignment.reason else None,
        dead_for=assignment.dead_for if assignment else None,
        # bgp VIPs: owned by nobody, announced by every able node; this one or not.
        bgp_announced_here=(
            f"{vip}/{address.max_prefixlen}" in announced
            if announced is not None and pool is not None and pool.announce == "bgp"
            else None
        ),
        backends=counts([state.services[o] for o in owners if o in state.services]),
    )


def vips_view(
    state: StateView,
    healthy: Callable[[str, Backend], bool] | None = None,
    announced: set[str] | None = None,
) -> list[VipEntry]:
    """One entry per allocated address (`vip_entry`); with `healthy` (this node's health
    checks), how many of its backends answer."""

    def counts(services: list[Service]) -> BackendCounts | None:
        return backend_counts(services, healthy) if healthy is not None else None

    order = sorted(state.by_address, key=lambda a: (a.version, int(a)))
    return [vip_entry(state, address, counts, announced) for address in order]


class VipsCache:
    """`GET /v1/vips` at thousands of VIPs: each entry is kept encoded and made again only when
    one of its parts changed (its allocations, assignment, pool, services, or the health of
    their backends, by `version_of(service id)`). Building all 5,000 entries took ~0.7 s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[IPAddress, tuple[tuple[Any, ...], bytes]] = {}
        self.built = 0  # entries made (again): what the cache saves shows here

    def body(
        self,
        state: StateView,
        healthy: Callable[[str, Backend], bool] | None,
        announced: set[str] | None,
        version_of: Callable[[str], int] | None,
    ) -> bytes:
        def counts(services: list[Service]) -> BackendCounts | None:
            return backend_counts(services, healthy) if healthy is not None else None

        with self._lock:
            entries: dict[IPAddress, tuple[tuple[Any, ...], bytes]] = {}
            parts = []
            for address in sorted(state.by_address, key=lambda a: (a.version, int(a))):
                owners = sorted(state.by_address[address])
                # The parts themselves (the key keeps them alive), compared by identity: the
                # state's objects are frozen and replaced, never changed in place.
                key = (
                    *(state.allocations[o] for o in owners),
                    *(state.services.get(o) for o in owners),
                    *((version_of(o) for o in owners) if version_of else ()),
                    state.assignments.get(address_text(address)),
                    state.pools.get(state.allocations[owners[0]].pool),
                    announced is not None
                    and f"{address_text(address)}/{address.max_prefixlen}" in announced,
                    healthy is None,
                )
                cached = self._entries.get(address)
                if cached is None or not _same(cached[0], key):
                    entry = vip_entry(state, address, counts, announced)
                    cached = (key, entry.model_dump_json().encode())
                    self.built += 1
                entries[address] = cached
                parts.append(cached[1])
            self._entries = entries
        return b"[" + b",".join(parts) + b"]"


def _same(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    return len(old) == len(new) and all(a is b or a == b for a, b in zip(old, new, strict=True))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def status_view(
    state: StateView,
    status: RaftStatus,
    peers: dict[str, str],
    version: str,
    now: float,
    lease_ages: Mapping[str, float | None] | None = None,
    *,
    dataplane: Mapping[str, object] | None = None,
    bgp: Mapping[str, object] | None = None,
    l2: Mapping[str, object] | None = None,
) -> Status:
    """`GET /v1/status`; `dataplane`, `bgp` and `l2`: the status of this node's parts (None:
    it has none), checked against their models here so a part that drifts fails loudly."""
    nodes = nodes_view(state, status, peers, now, lease_ages)
    leader_api = next((n.api_url for n in nodes if n.id == status.leader), None)
    return Status(
        node=status.node_id,
        version=version,
        raft=RaftInfo.model_validate(status.to_dict()),
        leader_api_url=leader_api,
        members=len(peers),
        members_connected=sum(1 for n in nodes if n.connected),
        pools=len(state.pools),
        services=len(state.services),
        allocations=len(state.allocations),
        vips=len(state.by_address),
        revision=state.revision,
        # Committed entries not yet applied here: grows when applying cannot keep up.
        apply_backlog=max(0, status.commit_index - status.last_applied),
        lease_ages={n.id: n.lease_age for n in nodes},
        drained=sorted(state.drained),
        dataplane=DataplaneInfo.model_validate(dataplane or {"forward": "none"}),
        bgp=BgpInfo.model_validate(bgp) if bgp is not None else None,
        l2=L2Info.model_validate(l2) if l2 is not None else None,
    )
