"""What this node must do now, derived change by change: the decision half of the reconciler.

`Reconciler.step(view, now, healthy, health_changed)` looks at the replicated state, this
node's lease and its health checks and says, as plain values (`Step`), which layer-2 VIPs to
answer for and until when, which routed VIPs to announce by BGP, which VIPs' forwarding rules
to change before announcing (gained or changed) and after withdrawing (dropped), and which
releases to acknowledge. `appliance.leases` carries a step out, in that order.

It reacts to what changed, not to "something was applied": a lease renewal (ten a second per
node) only moves the deadline; a service written among thousands touches the VIPs it was and is
on; a backend going down touches its service's VIP. Everything is looked at again only when the
lease starts or ends, this node is drained or undrained, a pool changes, or the state's change
log no longer reaches back to the last step (`StateView.changes_since` gives None).

The rules (unchanged from the first, whole-state reconciler):
- a layer-2 VIP is held while the committed assignment names this node and its lease is valid
  (raft/promises.py and raft/ownership.py have the arguments);
- a routed (bgp pool) VIP is announced while the lease is valid, the node is not drained and
  at least one of the VIP's backends (of its family) is healthy here (appliance/routing.py);
- a VIP's rules are in place before it is announced and leave after it was withdrawn; for a
  routed VIP, `withdraw_grace` seconds after: routers take tens of ms to act on a withdraw
  (FRR 68-105 ms, BIRD 8-89 ms here), and connections they send meanwhile must not be lost;
- a VIP this node is asked to release is acknowledged once it no longer answers for it, and
  again every `ack_every` seconds while the assignment still waits for it;
- a VIP held again under the assignment (same epoch) it held before its lease lapsed is
  *resumed*, not taken: no owner changed, and the assignment's time and reason are those of
  the first take (a failover's, seconds or minutes ago), so it must not be logged or measured
  as one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field

from appliance.dataplane.forwards import Forward, Policy, forwards
from appliance.model import (
    Assignment,
    Backend,
    IPAddress,
    Pool,
    Service,
    SourceAddress,
    address_text,
)
from appliance.routing import serves
from raft.ownership import lease_deadline
from raft.state import StateView

Healthy = Callable[[str, Backend], bool]


@dataclass(frozen=True)
class Step:
    """One reconcile pass, as values."""

    held: frozenset[str]  # layer-2 VIPs to answer for (the whole set)
    until: float  # their lease end (monotonic); 0 without a valid lease
    held_changed: bool  # `held` differs from the last step's (else only `until` moved)
    routed: dict[str, Pool] | None  # routed VIPs to announce (whole set), None: unchanged
    before: dict[IPAddress, tuple[Forward, ...]]  # rules to set before announcing
    after: dict[IPAddress, tuple[Forward, ...]]  # rules to drop after withdrawing
    acks: list[str]  # VIPs to acknowledge as released
    taken: list[Assignment] = field(default_factory=list)  # for logs and counters
    resumed: list[Assignment] = field(default_factory=list)  # held again, same assignment
    released: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)  # routed VIPs no longer announced
    announced: list[str] = field(default_factory=list)
    full: bool = False  # every VIP was looked at


class Reconciler:
    """The state kept between steps (see the module docstring). Not thread-safe."""

    def __init__(
        self,
        me: str,
        incarnation: int,
        lease: float,
        routes: bool,
        forwarding: bool,
        ack_every: float = 1.0,
        withdraw_grace: float = 1.0,
        promise_leases: bool = False,
    ) -> None:
        self.me, self.incarnation, self.lease = me, incarnation, lease
        self.promise_leases = promise_leases
        self.routes, self.forwarding, self.ack_every = routes, forwarding, ack_every
        self.withdraw_grace = withdraw_grace
        self.draining: dict[str, float] = {}  # withdrawn routed VIP -> when its rules may go
        self.revision: int | None = None
        self.held: frozenset[str] = frozenset()
        self.until = 0.0
        self.announced: frozenset[str] = frozenset()  # routed VIPs announced
        self.rules: dict[str, tuple[Forward, ...]] = {}  # what the data plane was told
        self.able = False
        self.valid = False
        self.vip_of: dict[str, str] = {}  # service id -> its VIP (text), as last seen
        self.releasing: set[str] = set()  # VIPs whose assignment waits for our release
        self.acked: dict[tuple[str, int], float] = {}  # (VIP, epoch) -> when acknowledged
        # VIP -> epoch of the assignment to this node it last answered under, kept while the
        # assignment still names this node (through a lapse), to tell a resumption.
        self.epochs: dict[str, int] = {}
        self.full_steps = 0
        self.partial_steps = 0

    def step(
        self,
        view: StateView,
        now: float,
        healthy: Healthy | None = None,
        health_changed: Set[str] | None = frozenset(),
        lease_end: float | None = None,
    ) -> Step:
        """The next step. `health_changed`: services whose backends' health changed since the
        last step (None: unknown, look at every service). `lease_end`: this node's lease end
        under quorum-promise leases (raft/promises.py, computed from `view`'s epoch); without
        it, the lease of committed renewals (raft/ownership.py)."""
        deadline = (
            lease_end
            if self.promise_leases
            else lease_deadline(view.renewals, self.me, self.incarnation, self.lease)
        )
        valid = deadline is not None and now < deadline
        until = deadline if valid and deadline is not None else 0.0
        able = valid and self.me not in view.drained
        changes = None if self.revision is None else view.changes_since(self.revision)
        full = (
            changes is None
            or health_changed is None
            or valid != self.valid
            or able != self.able
            or bool(changes.pools)
        )
        if full:
            affected = self._everything(view)
            self.vip_of = {sid: address_text(s.address) for sid, s in view.services.items()}
            self.full_steps += 1
        else:
            assert changes is not None and health_changed is not None
            affected = self._affected(view, changes.services | health_changed)
            affected |= changes.assignments
            if affected:
                self.partial_steps += 1
        self.revision, self.valid, self.able = view.revision, valid, able

        held = set(self.held)
        announced = set(self.announced)
        before: dict[IPAddress, tuple[Forward, ...]] = {}
        after: dict[IPAddress, tuple[Forward, ...]] = {}
        for vip in sorted(affected):
            address = ipaddress.ip_address(vip)
            services = view.services_at(address)
            assignment = view.assignments.get(vip)
            holds = valid and assignment is not None and assignment.node == self.me
            routed = vip in view.routed
            announces = self.routes and routed and able and serves(services, healthy)
            (held.add if holds else held.discard)(vip)
            if assignment is None or assignment.node != self.me:
                self.epochs.pop(vip, None)  # a later assignment here is a new take
            (announced.add if announces else announced.discard)(vip)
            if assignment is not None and assignment.releasing == self.me:
                self.releasing.add(vip)
            else:
                self.releasing.discard(vip)
            if self.forwarding:
                serving = holds or announces
                policy = _policy(view, services)
                self._rules(vip, address, services, serving, healthy, policy, now, before, after)
        # (`grace_end`, not `until`: reusing that name made the step's lease end the grace's
        # end, so a withdrawn routed VIP stretched the layer-2 VIPs' answering past the lease.)
        for vip, grace_end in list(self.draining.items()):
            if now >= grace_end:
                del self.draining[vip]
                if vip not in held and vip not in announced and vip in self.rules:
                    del self.rules[vip]
                    after[ipaddress.ip_address(vip)] = ()

        new_held, new_announced = frozenset(held), frozenset(announced)
        taken, resumed = self._gained(view, new_held)
        step = Step(
            held=new_held,
            until=until,
            held_changed=new_held != self.held,
            routed=(
                {vip: view.pools[view.routed[vip]] for vip in sorted(new_announced)}
                if new_announced != self.announced
                else None
            ),
            before=before,
            after=after,
            acks=self._acks(view, new_held, now),
            taken=taken,
            resumed=resumed,
            released=sorted(self.held - new_held),
            withdrawn=sorted(self.announced - new_announced),
            announced=sorted(new_announced - self.announced),
            full=full,
        )
        self.held, self.until, self.announced = new_held, until, new_announced
        return step

    def _gained(
        self, view: StateView, held: frozenset[str]
    ) -> tuple[list[Assignment], list[Assignment]]:
        """The assignments of VIPs held now and not before: taken (a new assignment here) and
        resumed (the one answered under before the lease lapsed)."""
        taken: list[Assignment] = []
        resumed: list[Assignment] = []
        for vip in sorted(held - self.held):
            assignment = view.assignments[vip]
            same = self.epochs.get(vip) == assignment.epoch
            (resumed if same else taken).append(assignment)
            self.epochs[vip] = assignment.epoch
        return taken, resumed

    def _rules(
        self,
        vip: str,
        address: IPAddress,
        services: list[Service],
        serving: bool,
        healthy: Healthy | None,
        policy: Policy,
        now: float,
        before: dict[IPAddress, tuple[Forward, ...]],
        after: dict[IPAddress, tuple[Forward, ...]],
    ) -> None:
        """What one VIP's rules become: set before announcing, dropped after withdrawing."""
        if not serving and vip in self.announced and vip in self.rules:
            self.draining.setdefault(vip, now + self.withdraw_grace)
        if not serving and vip in self.draining:
            return  # withdrawn from the routers: forwarding goes on for the grace
        self.draining.pop(vip, None)
        rules = tuple(forwards(services, [address], healthy, lambda _: policy)) if serving else ()
        if rules == self.rules.get(vip, ()):
            return
        if rules:
            before[address] = rules
            self.rules[vip] = rules
        else:
            after[address] = ()
            self.rules.pop(vip, None)

    def _everything(self, view: StateView) -> set[str]:
        vips = {address_text(s.address) for s in view.services.values()}
        vips |= set(view.assignments.keys()) | set(view.routed.keys())
        return vips | set(self.held) | set(self.announced) | set(self.rules) | set(self.draining)

    def _affected(self, view: StateView, service_ids: Iterable[str]) -> set[str]:
        """The VIPs the services were on (as last seen) and are on now."""
        vips = set()
        for sid in service_ids:
            old = self.vip_of.pop(sid, None)
            if old is not None:
                vips.add(old)
            service = view.services.get(sid)
            if service is not None:
                self.vip_of[sid] = address_text(service.address)
                vips.add(address_text(service.address))
        return vips

    def _acks(self, view: StateView, held: frozenset[str], now: float) -> list[str]:
        out = []
        for vip in sorted(self.releasing):
            assignment = view.assignments.get(vip)
            if assignment is None or assignment.releasing != self.me or vip in held:
                continue
            key = (vip, assignment.epoch)
            sent = self.acked.get(key)
            if sent is None or now - sent >= self.ack_every:
                self.acked[key] = now
                out.append(vip)
        if len(self.acked) > 4 * len(self.releasing) + 64:  # forget acknowledgements done
            self.acked = {k: t for k, t in self.acked.items() if k[0] in self.releasing}
        return out


def _policy(view: StateView, services: list[Service]) -> Policy:
    """The balancing of a VIP's pool (every service on one address is in one pool)."""
    allocation = view.allocations.get(services[0].spec.id) if services else None
    pool = view.pools.get(allocation.pool) if allocation is not None else None
    if pool is None:
        return Policy()
    balancing = pool.balancing
    snat = pool.source() == SourceAddress.VIP
    return Policy(size=balancing.table_size, seed=balancing.seed, snat=snat)
