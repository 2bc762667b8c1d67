"""The leader's VIP decisions: which placements to commit next. Pure: no clock, no I/O.

`decide` compares the scheduler's answer (raft/scheduler.py) with the committed assignment and
turns every difference into a placement with its reason: break-before-make for a live owner,
a failover from a dead one, a new VIP, a removed one.

`LeaderPlanner` keeps that up to date change by change, so that a leader with thousands of VIPs
does not reschedule all of them for every service written (its event loop sat in a quadratic
rebalance for minutes, and a full pass per write holds the GIL the Raft tick thread needs).
A change of the nodes' facts (alive, drained), of a pool, a new leader or a gap in the change
log makes it schedule every VIP (O(N log N)); otherwise only the VIPs whose services or
assignment changed since its last decision are placed, among the loads of all the others (a
new VIP goes to the least loaded node, as rule 3 of the scheduler would put it). A full pass
at most every `full_every` seconds while changes come in rebalances what node constraints
may have skewed.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping, Set

from appliance.model import Assignment, ChangeReason, IPAddress, Service, address_text
from raft.commands import AssignVips, Placement
from raft.scheduler import NodeFacts, VipDemand, schedule
from raft.state import StateView


def demand_of(vip: str, address: IPAddress, services: Iterable[Service]) -> VipDemand | None:
    """The demand of one address; sharing services allow the intersection of their nodes."""
    allowed: frozenset[str] | None = None
    found = False
    for service in services:
        found = True
        if service.spec.nodes is not None:
            mine = frozenset(service.spec.nodes)
            allowed = mine if allowed is None else allowed & mine
    if not found:
        return None
    return VipDemand(vip, allowed, sort_key=(address.version, int(address)))


def vip_demands(services: Mapping[str, Service]) -> list[VipDemand]:
    """One demand per service address."""
    by_vip: dict[str, list[Service]] = {}
    for service in services.values():
        by_vip.setdefault(address_text(service.address), []).append(service)
    out = []
    for vip in sorted(by_vip):
        demand = demand_of(vip, by_vip[vip][0].address, by_vip[vip])
        if demand is not None:
            out.append(demand)
    return out


def decide(
    members: list[str],
    drained: Set[str],
    demands: Mapping[str, VipDemand],
    assignments: Mapping[str, Assignment],
    alive: Set[str],
    at: float,
    based_on: Mapping[str, tuple[int, int]],
    ages: Mapping[str, float | None] | None = None,
    only: Set[str] | None = None,
    base: Mapping[str, tuple[int, int]] | None = None,
    max_moves: int | None = None,
    warming: Set[str] = frozenset(),
    spare: str | None = None,
) -> AssignVips | None:
    """The leader's next decision, or None when the committed assignment is already right.

    With `only`, just those VIPs are placed (without rebalancing), among the others' loads
    given per node in `base`. Each placement says why (`ChangeReason`); taking a VIP from a
    dead owner also says how long the leader had not seen that owner renew (`ages`, by the
    leader's clock), so that a failover's duration can be shown and counted. At most
    `max_moves` planned moves (drain, rebalance) start in one decision (see LeaderPlanner).
    `spare`: the node that holds VIPs only as a last resort (the leader, raft/scheduler.py).
    """
    return _decide(
        members,
        drained,
        demands,
        assignments,
        alive,
        at,
        based_on,
        ages,
        only,
        base,
        max_moves,
        warming,
        spare,
    )[0]


def _decide(
    members: list[str],
    drained: Set[str],
    demands: Mapping[str, VipDemand],
    assignments: Mapping[str, Assignment],
    alive: Set[str],
    at: float,
    based_on: Mapping[str, tuple[int, int]],
    ages: Mapping[str, float | None] | None,
    only: Set[str] | None,
    base: Mapping[str, tuple[int, int]] | None,
    max_moves: int | None,
    warming: Set[str],
    spare: str | None = None,
) -> tuple[AssignVips | None, bool]:
    """`decide`, and whether planned moves were held back by `max_moves`."""
    nodes = [
        NodeFacts(
            n, alive=n in alive, drained=n in drained, settled=n not in warming, spare=n == spare
        )
        for n in members
    ]
    if only is None:
        wanted = list(demands.values())
    else:
        wanted = [demands[vip] for vip in only if vip in demands]
    # A VIP being released counts as still with its old owner while that one lives: the
    # scheduler then keeps wanting it elsewhere, and we wait for the acknowledgement.
    previous = {d.vip: a.node for d in wanted if (a := assignments.get(d.vip)) is not None}
    target = schedule(nodes, wanted, previous, base=base, rebalance=only is None)
    placements: dict[str, Placement] = {}
    moves, capped = 0, False

    def moving(node: str) -> ChangeReason:
        return ChangeReason.DRAIN if node in drained else ChangeReason.REBALANCE

    for vip, want in target.items():
        current = assignments.get(vip)
        node = current.node if current else None
        releasing = current.releasing if current else None
        if node == want and releasing is None:
            continue
        if node is not None and node != want and node in alive:
            # break before make
            if max_moves is not None and moves >= max_moves:
                capped = True
                continue
            moves += 1
            placements[vip] = Placement(node=None, releasing=node, reason=moving(node))
        elif releasing is not None and releasing in alive and releasing != want:
            continue  # wait for the old owner's acknowledgement
        elif node is not None and node != want:
            age = (ages or {}).get(node)
            placements[vip] = Placement(
                node=want, reason=ChangeReason.DEAD, dead_for=round(age, 4) if age else None
            )
        elif node != want or releasing is not None:
            # a new VIP, or the second half of a planned move (the release was acknowledged,
            # or the releasing node died meanwhile)
            reason = (current.reason if current else None) or ChangeReason.NEW
            if releasing is not None and releasing not in alive:
                reason = ChangeReason.DEAD
            placements[vip] = Placement(node=want, reason=reason)
    for vip in assignments.keys() if only is None else only:
        current = assignments.get(vip)
        if vip not in target and current is not None and (current.node or current.releasing):
            holder = current.node
            placements[vip] = (
                Placement(node=None, releasing=holder, reason=ChangeReason.REMOVED)
                if holder in alive
                else Placement(node=None, reason=ChangeReason.REMOVED)
            )
    if not placements:
        return None, capped
    return AssignVips(placements=placements, based_on=dict(based_on), at=at), capped


def plan_assignments(
    members: list[str],
    drained: Set[str],
    services: Mapping[str, Service],
    assignments: Mapping[str, Assignment],
    alive: Set[str],
    at: float,
    based_on: Mapping[str, tuple[int, int]],
    ages: Mapping[str, float | None] | None = None,
) -> AssignVips | None:
    """`decide` over every VIP of `services` (a full pass)."""
    demands = {d.vip: d for d in vip_demands(services)}
    return decide(members, drained, demands, assignments, alive, at, based_on, ages)


# Planned moves (drain, rebalance) started per decision, one decision every `move_every`: a
# node back after a restart took 1,667 VIPs in one decision, and the burst (thousands of
# releases, acknowledgements, rules and announcements on every node at once) stalled Raft
# long enough for leases to lapse. A failover (dead owner) is never held back.
MAX_MOVES = 200


class LeaderPlanner:
    """`decide`, kept up to date change by change (see the module docstring)."""

    def __init__(
        self,
        members: list[str],
        full_every: float = 5.0,
        max_moves: int = MAX_MOVES,
        move_every: float = 0.5,
        spare: str | None = None,
    ) -> None:
        self.members = sorted(members)
        self.spare = spare  # this leader itself, with `vips_on_leader: avoid`
        self.full_every = full_every
        self.max_moves = max_moves
        self.move_every = move_every
        self.full_passes = 0
        self.partial_passes = 0
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next plan is a full pass (a new leadership)."""
        self._revision: int | None = None
        self._facts: tuple[frozenset[str], frozenset[str], frozenset[str]] | None = None
        self._demands: dict[str, VipDemand] = {}
        self._vip_of: dict[str, str] = {}  # service id -> its address (text), as planned
        self._last_full = -math.inf
        self._since_full = False
        self._retry: set[str] = set()  # VIPs of the last decision: re-checked next time
        self._more_moves_at: float | None = None  # planned moves held back: next full pass

    def plan(
        self,
        view: StateView,
        alive: Set[str],
        now: float,
        at: float,
        based_on: Mapping[str, tuple[int, int]],
        ages: Mapping[str, float | None] | None = None,
        warming: Set[str] = frozenset(),
    ) -> AssignVips | None:
        """The next decision (None: nothing to change). `now` is the leader's monotonic clock,
        `at` its unix time (shown as `since`); `warming`: alive nodes back so recently that
        they get VIPs only when nobody else may take them."""
        facts = (frozenset(alive), frozenset(view.drained), frozenset(warming))
        changes = None if self._revision is None else view.changes_since(self._revision)
        full = (
            changes is None
            or facts != self._facts
            or bool(changes.pools)
            or (self._since_full and now - self._last_full >= self.full_every)
            or (self._more_moves_at is not None and now >= self._more_moves_at)
        )
        only: set[str] | None = None
        base: dict[str, tuple[int, int]] | None = None
        if full:
            self._rebuild(view)
            self._last_full, self._since_full = now, False
            self.full_passes += 1
        else:
            assert changes is not None
            if self._revision == view.revision and not self._retry:
                return None
            only = self._update(view, changes.services) | set(changes.assignments) | self._retry
            self._since_full = self._since_full or bool(changes)
            if not only:
                self._revision = view.revision
                return None
            base = self._base_loads(view, only)
            self.partial_passes += 1
        self._revision, self._facts = view.revision, facts
        decision, capped = _decide(
            self.members,
            view.drained,
            self._demands,
            view.assignments,
            alive,
            at,
            based_on,
            ages,
            only,
            base,
            self.max_moves,
            warming,
            self.spare,
        )
        if full:
            self._more_moves_at = now + self.move_every if capped else None
        self._retry = set(decision.placements) if decision is not None else set()
        return decision

    def _rebuild(self, view: StateView) -> None:
        owned = {
            k: s for k, s in view.services.items() if address_text(s.address) not in view.routed
        }
        self._demands = {d.vip: d for d in vip_demands(owned)}
        self._vip_of = {k: address_text(s.address) for k, s in owned.items()}

    def _update(self, view: StateView, service_ids: Set[str]) -> set[str]:
        """Refresh the demands of the VIPs the changed services were or are on."""
        vips: set[str] = set()
        for sid in service_ids:
            old = self._vip_of.pop(sid, None)
            if old is not None:
                vips.add(old)
            service = view.services.get(sid)
            if service is not None and address_text(service.address) not in view.routed:
                self._vip_of[sid] = address_text(service.address)
                vips.add(address_text(service.address))
        for vip in vips:
            demand = None
            if vip not in view.routed:
                address = ipaddress.ip_address(vip)
                demand = demand_of(vip, address, view.services_at(address))
            if demand is None:
                self._demands.pop(vip, None)
            else:
                self._demands[vip] = demand
        return vips

    def _base_loads(self, view: StateView, only: Set[str]) -> dict[str, tuple[int, int]]:
        """Per node, the VIPs the assignment gives it outside `only` (count, weight)."""
        counts = dict(view.vip_counts)
        for vip in only:
            current = view.assignments.get(vip)
            if current is not None and current.node in counts:
                counts[current.node] -= 1
        return {node: (count, count) for node, count in counts.items()}
