"""The agent's ownership loops: lease renewals, the leader's assignment decisions, and the
reconciler that makes the announcer hold exactly the VIPs this node may answer for.

The safety argument lives in raft/ownership.py; the decisions in raft/planner.py (the leader's)
and appliance/reconciler.py (each node's); this module wires them to clocks, the Raft cluster,
the announcers and the data plane, and carries each reconcile step out in its order: rules of
gained VIPs, then announcing, then withdrawing, then removing the rules of dropped VIPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from appliance.dataplane.forwards import Forward
from appliance.lease_book import LEASED_WITHIN, LeaseBook, LocalBook, lease_covers
from appliance.metrics import Metrics
from appliance.model import Assignment, Backend, ChangeReason, IPAddress, LeaseRenewal, Pool
from appliance.reconciler import Reconciler
from appliance.tally import SHOWN, listed
from raft.cluster import RaftStatus, SubmitError
from raft.commands import AssignVips, Command, Evidence, ReleasedVips, RenewLease
from raft.ownership import Liveness
from raft.planner import LeaderPlanner
from raft.promises import Promises, facts_of
from raft.state import StateView
from raft.timing import TimingProfile

log = logging.getLogger("raftlb.ownership")
# The takeover reason of a VIP held again, after a lapsed lease, under the same assignment.
RESUMED = "resumed"


class Clock(Protocol):
    """Where the loops read time: `monotonic` for leases and deadlines, `time` for what is
    shown to people and for the leader's decisions (`since`)."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class OwnershipCluster(Protocol):
    """What the loops need of the Raft cluster (raft.cluster.RaftCluster; a fake in tests)."""

    node_id: str

    def view(self) -> StateView: ...

    def status(self) -> RaftStatus: ...


class Forwarding(Protocol):
    """The data plane as the loops drive it (appliance.dataplane.nft.DataPlane)."""

    loaded: bool

    def update(self, changes: Mapping[IPAddress, tuple[Forward, ...]]) -> bool: ...

    def repair(self) -> bool: ...

    def stop(self) -> None: ...


class BackendHealth(Protocol):
    """The backend checks as the loops read them (appliance.health.HealthChecker)."""

    def update(self, services: Mapping[str, Any], only: Iterable[str] | None = None) -> None: ...

    def healthy(self, service_id: str, backend: Backend) -> bool: ...

    def take_changed(self) -> set[str]: ...


class RouteAnnouncer(Protocol):
    """What the reconciler drives for routed VIPs: the whole set of VIPs (with their pool)."""

    def set(self, routed: Mapping[str, Pool]) -> None: ...


class Announcer(Protocol):
    """What the reconciler drives (announce/): the whole desired set, idempotent."""

    def set(self, vips: Iterable[IPAddress], valid_until: float) -> None: ...

    def extend(self, valid_until: float) -> None: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


class NullAnnouncer:
    """`announce: none`: ownership is decided and shown, nothing is announced."""

    def __init__(self) -> None:
        self.vips: frozenset[IPAddress] = frozenset()
        self.valid_until = 0.0

    def set(self, vips: Iterable[IPAddress], valid_until: float) -> None:
        self.vips, self.valid_until = frozenset(vips), valid_until

    def extend(self, valid_until: float) -> None:
        self.valid_until = valid_until

    def clear(self) -> None:
        self.vips = frozenset()

    def close(self) -> None:
        self.clear()


def _addresses(vips: Iterable[str]) -> list[IPAddress]:
    return [ipaddress.ip_address(v) for v in vips]


class OwnershipLoops:
    """Renewal, leader and reconcile loops of one agent."""

    def __init__(
        self,
        cluster: OwnershipCluster,
        metrics: Metrics,
        members: list[str],
        timing: TimingProfile,
        announcer: Announcer,
        *,
        dataplane: Forwarding | None = None,
        health: BackendHealth | None = None,
        bgp: RouteAnnouncer | None = None,
        clock: Clock | None = None,
        spare_leader: bool = False,
    ) -> None:
        self.cluster = cluster
        self.clock = clock or SystemClock()
        self.metrics = metrics
        self.me = cluster.node_id
        self.members = sorted(members)
        self.timing = timing
        self.announcer = announcer
        self.dataplane = dataplane
        self.health = health
        self.bgp = bgp
        # `vips_on_leader: avoid`: as leader, this node gives its VIPs to the others, so that
        # the death of an owner is handled by a living leader, without an election first.
        self.spare_leader = spare_leader
        self.routed: frozenset[str] = frozenset()  # routed VIPs announced now
        self.incarnation = int(self.clock.time() * 1_000_000)
        self.seq = 0
        self.held: frozenset[str] = frozenset()
        self.valid_until = 0.0
        # Quorum-promise leases (raft/promises.py): a book in this process; the agent puts
        # its heartbeat helper's in its place (appliance/agent.py start_heartbeats).
        self.book: LeaseBook | None = None
        if timing.leases == "promise":
            self.book = LocalBook(
                Promises(
                    self.me,
                    self.members,
                    self.incarnation,
                    timing.promise_window,
                    started=self.clock.monotonic(),
                    drift=timing.drift,
                    raft_grace=timing.raft_grace,
                )
            )
        self.reconciler = Reconciler(
            self.me,
            self.incarnation,
            timing.lease,
            routes=bgp is not None,
            forwarding=dataplane is not None,
            promise_leases=self.book is not None,
        )
        self._health_revision: int | None = None
        self.seen = Liveness(timing.dead_after)  # every node's view, for `lease_age`
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._acked: set[tuple[str, int]] = set()
        self.takeovers = 0
        self.planner: LeaderPlanner | None = None
        self._warming: frozenset[str] | None = None  # the planner's, while leading
        self._raised: dict[tuple[str, int], float] = {}  # epoch raises asked, and when
        self._given_up_at: dict[str, float] = {}  # when the peers' evidence last named a node
        # The announcer's VIPs were given to this node by a state where its lease epoch was
        # `_announced_epoch`: they are extended only by a lease good for that epoch.
        self._announce_lock = threading.Lock()
        self._announced_epoch: int | None = None

    def cancel_inflight(self) -> list[asyncio.Task[Any]]:
        """Cancel the commands still waiting for a commit (on stop); return their tasks."""
        tasks = list(self._inflight)
        for task in tasks:
            task.cancel()
        return tasks

    def wake(self) -> None:
        """Called (thread-safely, via the loop) whenever a Raft entry was applied."""
        self._wake.set()

    def _fire(self, command: Command, timeout: float) -> None:
        if len(self._inflight) > 50:
            return  # no quorum for a while: do not pile up commands
        task = asyncio.create_task(self._submit_quietly(command, timeout))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _submit_quietly(self, command: Command, timeout: float) -> None:
        with contextlib.suppress(SubmitError):
            await self.metrics.submit(command, timeout)

    # -- renewals ---------------------------------------------------------------------------

    def renew(self) -> int:
        """Commit one renewal (in the background); its seq."""
        self.seq += 1
        renewal = LeaseRenewal(
            node=self.me,
            incarnation=self.incarnation,
            seq=self.seq,
            sent_at=self.clock.monotonic(),
        )
        self._fire(RenewLease(renewal=renewal), timeout=self.timing.lease)
        return self.seq

    async def renew_loop(self) -> None:
        period = self.timing.renew_period
        while True:
            self.renew()
            await asyncio.sleep(period)

    # -- the leader's decisions -------------------------------------------------------------

    async def leader_loop(self, period: float = 0.02) -> None:
        liveness = Liveness(self.timing.dead_after)
        planner = LeaderPlanner(self.members, spare=self.me if self.spare_leader else None)
        self.planner = planner
        leading = False
        first_seq = 0
        while True:
            await asyncio.sleep(period)
            status = self.cluster.status()
            if status.role != "leader":
                leading, self._warming = False, None
                continue
            state = self.cluster.view()
            now = self.clock.monotonic()
            if not leading:
                # A renewal now, not at the renew loop's next turn: once it applies, this
                # term's leader has everything it inherited and may decide (a dead owner's
                # VIPs wait for that).
                leading, first_seq = True, self.renew()
                self.seen.observe(now, state.renewals)
                liveness.reset(now, state.renewals, self.seen)
                planner.reset()
                log.info("leading: deciding VIP owners once this term's first renewal applies")
            own = state.renewals.get(self.me)
            if own is None or own.mark() < (self.incarnation, first_seq):
                continue  # not yet applied everything inherited from the previous leader
            liveness.observe(now, state.renewals)
            started = time.perf_counter()
            if self.book is not None:
                decision, alive = self._plan_by_promises(planner, liveness, state, now)
            else:
                alive = {n for n in self.members if liveness.alive(n, now)}
                warmup = self.timing.warmup
                warming = {n for n in alive if not liveness.settled(n, now, warmup)}
                self._warming = frozenset(warming)
                decision = planner.plan(
                    state,
                    alive,
                    now,
                    self.clock.time(),
                    liveness.marks(),
                    {n: liveness.age(n, now) for n in self.members},
                    warming,
                )
            self.metrics.plan_seconds.observe(time.perf_counter() - started)
            if decision is None:
                continue
            self._log_decision(state, decision, alive)
            try:
                result = await self.metrics.submit(decision, 1.0)
            except SubmitError as exc:
                log.warning("assignment not committed: %s", exc.message)
                continue
            value = result.get("value") or {}
            if value.get("refused"):
                why = (
                    "no valid evidence that their owner's lease ended"
                    if self.book is not None
                    else "their owner renewed meanwhile"
                )
                log.info("assignment refused for %s: %s", value["refused"], why)
            for node in value.get("taken_from") or ():
                log.warning(
                    "%s's lease ended (its peers gave up on it): its VIPs move to others",
                    node,
                )

    def _plan_by_promises(
        self, planner: LeaderPlanner, liveness: Liveness, state: StateView, now: float
    ) -> tuple[AssignVips | None, set[str]]:
        """The decision under quorum-promise leases: VIPs leave a node only with evidence
        that its lease ended; new VIPs go to nodes that hold a lease and renew steadily."""
        assert self.book is not None
        view = self.book.view(now)
        # Each (node, epoch) asked once a second: the book sees a raise a reconcile later.
        stale = {
            n: e for n, e in view.stale.items() if now - self._raised.get((n, e), -math.inf) >= 1.0
        }
        self._raised = {k: t for k, t in self._raised.items() if now - t < 1.0}
        self._raised.update({k: now for k in stale.items()})
        ages = {n: view.age(n, now) for n in self.members}
        evidence = {
            n: Evidence(epoch=epoch, by=dict(by))
            for n, (epoch, by) in view.evidence.items()
            if n != self.me
        }
        leased = view.leased
        alive = set(self.members) - set(evidence)
        warmup = self.timing.warmup
        # A node given up on gets no new VIPs for LEASED_WITHIN after: the raise that took its
        # VIPs makes the evidence moot while it still counts as leased (it said so within
        # LEASED_WITHIN), so it was given VIPs back (rebalance) and had them taken again every
        # 0.3 s (torture, asym). Past that, it counts as leased only if it said so since.
        self._given_up_at.update(dict.fromkeys(evidence, now))
        recent = {n for n, at in self._given_up_at.items() if now - at < LEASED_WITHIN}
        warming = {
            n
            for n in alive
            if n not in leased or n in recent or not liveness.settled(n, now, warmup)
        }
        self._warming = frozenset(warming)
        decision = planner.plan(state, alive, now, self.clock.time(), {}, ages, warming)
        if decision is None:
            if not stale:
                return None, alive
            # Nothing to move: raise the epochs of nodes given up on and heard again, so
            # that the peers that gave up promise them again.
            decision = AssignVips(placements={}, at=self.clock.time())
        update = {"evidence": evidence, "cluster_size": len(self.members), "refresh": stale}
        return decision.model_copy(update=update), alive

    def _log_decision(self, state: StateView, decision: AssignVips, alive: set[str]) -> None:
        """One line per moved VIP; new VIPs (thousands at a time when services are written in
        bulk) are summed up in one line."""
        new = 0
        for vip, placement in sorted(decision.placements.items()):
            before = state.assignments.get(vip)
            if before is None and placement.reason == ChangeReason.NEW:
                new += 1
                continue
            log.info(
                "assign %s: %s -> %s%s (%s%s; alive: %s)",
                vip,
                before.node if before else None,
                placement.node,
                f", releasing {placement.releasing}" if placement.releasing else "",
                placement.reason,
                f", not renewed for {placement.dead_for:.3f}s" if placement.dead_for else "",
                ", ".join(sorted(alive)),
            )
        if new:
            log.info("assign %d new VIP(s)", new)

    # -- the reconciler ---------------------------------------------------------------------

    async def reconcile_loop(self) -> None:
        try:
            while True:
                await self.reconcile()
                wait = 0.05
                if self.held:
                    wait = max(0.001, min(wait, self.valid_until - self.clock.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                self._wake.clear()
        finally:
            self.announcer.clear()
            if self.dataplane is not None:
                self.dataplane.stop()  # not serving any more: no table left behind

    async def reconcile(self) -> None:
        """One pass: decide (appliance.reconciler) and carry the step out, in order."""
        started = time.perf_counter()
        state = self.cluster.view()
        now = self.clock.monotonic()
        self.seen.observe(now, state.renewals)
        healthy = changed = None
        if self.health is not None:
            spec_changes = (
                None
                if self._health_revision is None
                else state.changes_since(self._health_revision)
            )
            self.health.update(
                state.services, None if spec_changes is None else spec_changes.services
            )
            self._health_revision = state.revision
            healthy, changed = self.health.healthy, self.health.take_changed()
        state_epoch = state.epochs.get(self.me, 0)
        lease_end = self._promise_lease(state, now) if self.book is not None else None
        step = self.reconciler.step(
            state, now, healthy, changed if changed is not None else set(), lease_end
        )
        if step.before:
            # Rules for a gained (or changed) VIP are in place before it is announced.
            await self._rules(step.before)
        if step.held_changed:
            took = [line for a in step.taken if (line := self._took(a)) is not None]
            if len(took) > SHOWN:
                log.info("took %d VIP(s): %s", len(took), listed(took, sep="; "))
            else:
                for line in took:
                    log.info("took %s", line)
            if step.resumed:
                self._resumed(step.resumed)
            if step.released:
                reason = "lease lapsed" if not step.until else "assigned elsewhere"
                log.info("released %s (%s)", listed(step.released), reason)
            with self._announce_lock:
                self.announcer.set(_addresses(step.held), step.until)
                self._announced_epoch = state_epoch
        else:
            with self._announce_lock:
                if step.until != self.valid_until and step.held:
                    self.announcer.extend(step.until)  # a renewal: same VIPs, O(1)
                # The same VIPs, as the state of this step (its epoch) gives them.
                self._announced_epoch = state_epoch
        self.held, self.valid_until = step.held, step.until
        if self.bgp is not None and step.routed is not None:
            for vip in step.announced:
                log.info("announcing %s by BGP", vip)
            for vip in step.withdrawn:
                log.info("withdrawing %s from BGP (%s)", vip, self._why_not(state, step.until, now))
            self.bgp.set(step.routed)
            self.routed = frozenset(step.routed)
        if step.after:
            # Rules of a dropped VIP go once it is no longer announced.
            await self._rules(step.after)
        elif self.dataplane is not None and not self.dataplane.loaded:
            # At start (the firewall is in the tables too, VIPs or not), or after a failure.
            await asyncio.get_running_loop().run_in_executor(None, self.dataplane.repair)
        if step.acks:
            self._fire(ReleasedVips(node=self.me, vips=step.acks), 1.0)
        self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    async def _rules(self, changes: Mapping[IPAddress, tuple[Forward, ...]]) -> None:
        if self.dataplane is None:
            return
        # In a worker thread: a full load of thousands of services takes a while, and the
        # event loop must keep sending lease renewals meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self.dataplane.update, changes)

    def _why_not(self, state: StateView, until: float, now: float) -> str:
        if until <= now:
            return "no valid lease: not in quorum"
        if self.me in state.drained:
            return "drained"
        return "no healthy backend, or the VIP is gone"

    def _took(self, a: Assignment) -> str | None:
        """Count a VIP this node starts answering for, and log a failover; else what to say
        of it (many are said in one line)."""
        self.takeovers += 1
        reason = str(a.reason or "unknown")
        self.metrics.takeovers.labels(reason).inc()
        lag = self.clock.time() - a.since if a.since else None
        if a.reason == ChangeReason.DEAD and a.dead_for is not None and lag is not None:
            total = a.dead_for + max(0.0, lag)
            self.metrics.failover_seconds.observe(total)
            log.warning(
                "failover: took %s (epoch %d) from %s, which stopped renewing: answering %.0f "
                "ms after its last renewal was seen (%.0f ms to declare it dead, %.0f ms to "
                "take over)",
                a.vip,
                a.epoch,
                a.previous,
                1000 * total,
                1000 * a.dead_for,
                1000 * lag,
            )
            return None
        after = f", {1000 * lag:.0f} ms after the decision" if lag is not None else ""
        origin = f" from {a.previous}" if a.previous else ""
        return f"{a.vip} (epoch {a.epoch}, {reason}{origin}){after}"

    def _resumed(self, assignments: list[Assignment]) -> None:
        """Log and count VIPs answered again under the assignment held before this node's
        lease lapsed: not a failover (no owner changed; the assignment's time is the first
        take's, which made 15-39 s 'failovers' of lapses), so one summary line at info."""
        self.metrics.takeovers.labels(RESUMED).inc(len(assignments))
        log.info(
            "answering %d VIP(s) again, the lease being valid again (same assignment): %s",
            len(assignments),
            listed([f"{a.vip} (epoch {a.epoch})" for a in assignments]),
        )

    def _promise_lease(self, state: StateView, now: float) -> float:
        """Tell the book the state's facts; this node's lease end under that state."""
        assert self.book is not None
        grace = self.timing.raft_grace
        raft_alive = {
            n for n in self.members if (age := self.seen.age(n, now)) is not None and age <= grace
        }
        self.book.observe(now, facts_of(state.renewals, state.epochs, self.members), raft_alive)
        view = self.book.view(now)
        if not lease_covers(view.lease_epoch, state.epochs.get(self.me, 0)):
            return -math.inf
        return min(view.lease_until, now + self.timing.promise_window)

    def extend_lease(self, epoch: int | None, until: float) -> None:
        """Off the event loop (the heartbeat relay): keep answering for the VIPs held until
        `until`, a lease the book computed for this node's `epoch`, if the reconciler announced
        them under that epoch or a later one (a promise is good from some epoch on). A lease
        then lasts while promises arrive, whatever keeps the event loop busy: extended only
        from there, an event loop stalled for 200 ms (thousands of services) ended leases."""
        with self._announce_lock:
            if not self.held or not lease_covers(epoch, self._announced_epoch):
                return
            self.announcer.extend(until)

    def current_lease(self) -> float:
        """The announcer's lease source (announce/l2.py `lease_source`: its thread, its lock
        held, so it takes no lock): the book's newest lease end if it is good for the epoch
        the held VIPs were announced under. `_announced_epoch` is assigned after the VIPs of
        its state are set, so a racing read sees an epoch no later than theirs (epochs only
        grow): a lease good for it is good for them."""
        if self.book is None:
            return -math.inf
        now = self.clock.monotonic()
        view = self.book.view(now)
        if not lease_covers(view.lease_epoch, self._announced_epoch):
            return -math.inf
        return min(view.lease_until, now + self.timing.promise_window)

    def warming_nodes(self) -> frozenset[str] | None:
        """While leading: the nodes the planner gives VIPs only as a last resort (back from a
        restart or a gap, or given up on lately); None otherwise."""
        return self._warming

    def lease_ages(self) -> dict[str, float | None]:
        """Seconds since this node last heard each member's lease heartbeat (quorum-promise
        leases; itself: 0 while it holds a lease), or saw its renewal change (commit leases)."""
        now = self.clock.monotonic()
        if self.book is None:
            return {n: self.seen.age(n, now) for n in self.members}
        view = self.book.view(now)
        ages = {n: view.age(n, now) for n in self.members}
        ages[self.me] = 0.0 if now < view.lease_until else None
        return ages
