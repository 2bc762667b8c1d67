"""The reconcile shell (appliance.leases.OwnershipLoops) carries each step out in its order,
and does nothing else: against an in-memory cluster, a recording announcer, data plane and BGP
announcer that share one log of operations, and a clock the test moves (no root, no sleeps).

The order is the safety argument: a VIP's rules are in place before it is announced, its rules
leave only after it is withdrawn, and a release is acknowledged once it is no longer answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Iterable, Mapping, Set
from typing import Any

import pytest

from appliance.dataplane.forwards import Forward
from appliance.lease_book import LEASED_WITHIN, BookView, LocalBook
from appliance.leases import OwnershipLoops
from appliance.metrics import Metrics
from appliance.model import IPAddress, Pool
from raft.promises import Echo, Heartbeat, NodeFacts
from raft.timing import PROFILES, TimingProfile
from tests.support.fake_cluster import InMemoryCluster
from tests.unit.appliance.test_reconciler import _report, assign, command, pools, put

ME, OTHER = "n1", "n2"
TIMING = dataclasses.replace(PROFILES["fast"], leases="commit")
Op = tuple[Any, ...]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.8e9 + self.now


class Announcer:
    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops

    def set(self, vips: Iterable[IPAddress], valid_until: float) -> None:
        self.ops.append(("announce", tuple(sorted(str(v) for v in vips))))

    def extend(self, valid_until: float) -> None:
        self.ops.append(("extend", valid_until))

    def clear(self) -> None:
        self.ops.append(("clear",))

    def close(self) -> None:
        self.ops.append(("close",))


class DataPlane:
    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        self.loaded = True

    def update(self, changes: Mapping[IPAddress, tuple[Forward, ...]]) -> bool:
        # Which VIPs get rules (True) and which lose them (False).
        self.ops.append(("rules", {str(v): bool(f) for v, f in sorted(changes.items())}))
        return True

    def repair(self) -> bool:
        self.ops.append(("repair",))
        self.loaded = True
        return True

    def stop(self) -> None:
        self.ops.append(("stop",))


class Routes:
    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops

    def set(self, routed: Mapping[str, Pool]) -> None:
        self.ops.append(("routes", tuple(sorted(routed))))


class Rig:
    """One node's loops over a two-node in-memory cluster; `ops` is what they did."""

    def __init__(self, bgp: bool = False, timing: TimingProfile = TIMING) -> None:
        self.ops: list[Op] = []
        self.clock = Clock()
        self.cluster = InMemoryCluster(ME, {ME: "192.0.2.1:7000", OTHER: "192.0.2.2:7000"})
        self.state = self.cluster.state
        self.loops = OwnershipLoops(
            self.cluster,
            Metrics(self.cluster),
            [ME, OTHER],
            timing,
            Announcer(self.ops),
            dataplane=DataPlane(self.ops),
            bgp=Routes(self.ops) if bgp else None,
            clock=self.clock,
        )
        self.seq = 0
        pools(self.state)

    def renew(self) -> None:
        self.seq += 1
        renewal = {
            "node": ME,
            "incarnation": self.loops.incarnation,
            "seq": self.seq,
            "sent_at": self.clock.now,
        }
        assert self.state.apply(command("lease.renew", renewal=renewal))["ok"]

    async def step(self) -> list[Op]:
        """One reconcile pass; the operations it made (and its commands settled)."""
        self.ops.clear()
        await self.loops.reconcile()
        await asyncio.gather(*list(self.loops._inflight))
        return list(self.ops)

    def submitted(self) -> list[dict[str, Any]]:
        return [c for c in self.cluster.applied if c["type"] != "lease.renew"]


async def test_a_gained_vip_gets_its_rules_before_it_is_announced() -> None:
    rig = Rig()
    vip = put(rig.state, 0)
    assign(rig.state, {vip: {"node": ME, "reason": "new"}})
    rig.renew()
    assert await rig.step() == [("rules", {vip: True}), ("announce", (vip,))]
    # Nothing changed: nothing done.
    assert await rig.step() == []


async def test_a_renewal_only_extends_the_announcement() -> None:
    rig = Rig()
    vip = put(rig.state, 0)
    assign(rig.state, {vip: {"node": ME, "reason": "new"}})
    rig.renew()
    await rig.step()
    rig.clock.now += TIMING.renew_period
    rig.renew()
    assert await rig.step() == [("extend", rig.clock.now + TIMING.lease)]


async def test_assigned_elsewhere_withdraws_then_drops_rules_then_acknowledges() -> None:
    rig = Rig()
    vip = put(rig.state, 0)
    assign(rig.state, {vip: {"node": ME, "reason": "new"}})
    rig.renew()
    await rig.step()
    assign(rig.state, {vip: {"node": OTHER, "releasing": ME, "reason": "rebalance"}})
    assert await rig.step() == [("announce", ()), ("rules", {vip: False})]
    # The acknowledgement went out after the withdraw (the step's commands settle last).
    assert rig.submitted() == [{"v": 1, "type": "vips.released", "node": ME, "vips": [vip]}]


async def test_a_lapsed_lease_withdraws_everything_then_drops_the_rules() -> None:
    rig = Rig()
    vips = [put(rig.state, i) for i in range(3)]
    assign(rig.state, {v: {"node": ME, "reason": "new"} for v in vips})
    rig.renew()
    assert (await rig.step())[-1] == ("announce", tuple(sorted(vips)))
    rig.clock.now += TIMING.lease + 0.01  # no renewal committed meanwhile
    assert await rig.step() == [("announce", ()), ("rules", dict.fromkeys(sorted(vips), False))]
    assert rig.submitted() == []  # nobody asked for them: nothing to acknowledge


async def test_a_routed_vip_is_forwarded_before_its_route_and_kept_for_the_grace() -> None:
    rig = Rig(bgp=True)
    routed = put(rig.state, 0, pool="routed")
    rig.renew()
    # Forwarded before it is routed here; no layer-2 VIP, so nothing for the announcer.
    assert await rig.step() == [("rules", {routed: True}), ("routes", (routed,))]
    assert rig.state.apply(command("member.report", report=_report()))["ok"]
    assert rig.state.apply(command("node.drain", node=ME, drained=True))["ok"]
    assert await rig.step() == [("routes", ())]  # withdrawn; forwarding goes on
    rig.clock.now += 0.5
    rig.renew()
    assert await rig.step() == []  # still within the withdraw grace
    rig.clock.now += 0.5  # the routers have acted on the withdraw
    rig.renew()
    assert await rig.step() == [("rules", {routed: False})]


async def test_a_withdrawn_route_does_not_stretch_the_layer2_lease() -> None:
    rig = Rig(bgp=True)
    vip = put(rig.state, 0)
    routed = put(rig.state, 1, pool="routed")
    assign(rig.state, {vip: {"node": ME, "reason": "new"}})
    rig.renew()
    await rig.step()
    assert rig.state.apply(command("member.report", report=_report()))["ok"]
    assert rig.state.apply(command("node.drain", node=ME, drained=True))["ok"]
    assert await rig.step() == [("routes", ())]  # the layer-2 VIP stays, its lease unchanged
    assert rig.loops.valid_until == rig.clock.now + TIMING.lease
    assert routed not in rig.loops.routed


async def test_a_data_plane_left_unloaded_is_repaired_even_without_a_change() -> None:
    rig = Rig()
    dataplane = rig.loops.dataplane
    assert isinstance(dataplane, DataPlane)
    dataplane.loaded = False  # at start, or after a failed update
    assert await rig.step() == [("repair",)]
    assert await rig.step() == []


async def test_under_promise_leases_a_vip_is_answered_while_a_majority_promises() -> None:
    rig = Rig(timing=PROFILES["fast"])
    local = rig.loops.book
    assert isinstance(local, LocalBook)
    book = local.promises
    vip = put(rig.state, 0)
    assign(rig.state, {vip: {"node": ME, "reason": "new"}})
    rig.renew()
    other = {"node": OTHER, "incarnation": 5, "seq": 1, "sent_at": 0.0}
    assert rig.state.apply(command("lease.renew", renewal=other))["ok"]
    assert ("announce", (vip,)) not in await rig.step()  # registered, but nobody promised
    sent = book.outgoing(rig.clock.now)[OTHER]
    echo = Echo(sent.incarnation, 0, sent.seq)
    book.receive(rig.clock.now + 0.001, Heartbeat(OTHER, 5, 0, 1, echo=echo, promised_from=0))
    assert ("announce", (vip,)) in await rig.step()
    window = PROFILES["fast"].promise_window
    assert rig.loops.valid_until == pytest.approx(rig.clock.now + window * 0.9 - 0.02)
    # A promise good only for a later epoch counts for nothing now.
    book.receive(rig.clock.now + 0.002, Heartbeat(OTHER, 5, 0, 2, echo=echo, promised_from=1))
    rig.clock.now += 0.01
    assert ("announce", ()) in await rig.step()


class FakeBook:
    """The narrow `LeaseBook` interface: a view set by the test, the facts it was told."""

    def __init__(self) -> None:
        self.current = BookView()
        self.told: list[dict[str, NodeFacts]] = []

    def observe(self, now: float, facts: Mapping[str, NodeFacts], raft_alive: Set[str]) -> None:
        self.told.append(dict(facts))

    def view(self, now: float) -> BookView:
        return self.current


def promise_rig() -> tuple[Rig, FakeBook, str]:
    rig = Rig(timing=PROFILES["fast"])
    book = FakeBook()
    rig.loops.book = book
    vip = put(rig.state, 0)
    assign(rig.state, {vip: {"node": ME, "reason": "new"}})
    rig.renew()
    return rig, book, vip


async def test_a_lease_of_an_earlier_epoch_holds_and_one_of_a_later_epoch_does_not() -> None:
    rig, book, vip = promise_rig()
    rig.state.epochs = rig.state.epochs.set(ME, 2)  # the state raised this node's epoch
    # The helper still reports a lease of epoch 1 (it has not read the new facts yet): a
    # promise good from epoch 1 on is good for 2.
    book.current = BookView(at=rig.clock.now, lease_until=rig.clock.now + 0.3, lease_epoch=1)
    assert ("announce", (vip,)) in await rig.step()
    assert book.told[-1][ME] == NodeFacts(rig.loops.incarnation, 2)
    # A lease of a later epoch than the state's says nothing of this state's VIPs.
    book.current = BookView(at=rig.clock.now, lease_until=rig.clock.now + 0.3, lease_epoch=3)
    rig.clock.now += 0.01
    assert ("announce", ()) in await rig.step()


async def test_the_relay_extends_only_what_was_announced_under_an_epoch_it_covers() -> None:
    rig, book, vip = promise_rig()
    rig.state.epochs = rig.state.epochs.set(ME, 1)
    book.current = BookView(at=rig.clock.now, lease_until=rig.clock.now + 0.3, lease_epoch=1)
    assert ("announce", (vip,)) in await rig.step()
    rig.ops.clear()
    rig.loops.extend_lease(0, rig.clock.now + 0.35)
    rig.loops.extend_lease(1, rig.clock.now + 0.36)
    rig.loops.extend_lease(2, rig.clock.now + 0.37)  # newer than the announced state: no
    rig.loops.extend_lease(None, rig.clock.now + 0.38)  # no lease at all: no
    assert rig.ops == [("extend", rig.clock.now + 0.35), ("extend", rig.clock.now + 0.36)]


async def test_the_announcers_lease_source_gives_only_a_lease_good_for_the_announced_epoch() -> (
    None
):
    rig, book, vip = promise_rig()
    assert rig.loops.current_lease() == -math.inf  # nothing announced yet
    rig.state.epochs = rig.state.epochs.set(ME, 1)
    book.current = BookView(at=rig.clock.now, lease_until=rig.clock.now + 0.3, lease_epoch=1)
    assert ("announce", (vip,)) in await rig.step()
    window = rig.loops.timing.promise_window
    book.current = BookView(at=rig.clock.now, lease_until=rig.clock.now + 9, lease_epoch=0)
    assert rig.loops.current_lease() == rig.clock.now + window  # never past one window
    book.current = BookView(at=rig.clock.now, lease_until=rig.clock.now + 0.2, lease_epoch=1)
    assert rig.loops.current_lease() == rig.clock.now + 0.2
    # A lease of a later epoch (a state this node has not applied may have taken VIPs).
    book.current = BookView(at=rig.clock.now, lease_until=rig.clock.now + 0.2, lease_epoch=2)
    assert rig.loops.current_lease() == -math.inf
    book.current = BookView(at=rig.clock.now, lease_until=rig.clock.now + 0.2, lease_epoch=None)
    assert rig.loops.current_lease() == -math.inf


def test_a_node_given_up_on_gets_no_new_vips_for_a_warmup() -> None:
    """Evidence took a node's VIPs; once it is moot (its epoch raised) the node is alive and
    still 'leased' for a moment: it must not be given VIPs back at once (a rebalance that
    evidence undid again every 0.3 s)."""
    rig = Rig(timing=PROFILES["fast"])
    book = FakeBook()
    rig.loops.book = book
    warming: list[set[str]] = []

    class Planner:  # records which nodes may not be given new VIPs
        def plan(self, *args: Any) -> None:
            warming.append(set(args[-1]))

    class Settled:  # every node has renewed steadily for long
        def settled(self, node: str, now: float, warmup: float) -> bool:
            return True

    def plan() -> set[str]:
        rig.loops._plan_by_promises(Planner(), Settled(), rig.cluster.view(), rig.clock.now)  # type: ignore[arg-type]
        return warming[-1]

    leased = frozenset({ME, OTHER})
    book.current = BookView(at=rig.clock.now, leased=leased)
    assert plan() == set()  # nobody given up on: both may get VIPs
    given_up = {OTHER: (0, {ME: rig.loops.incarnation})}
    book.current = BookView(at=rig.clock.now, leased=leased, evidence=given_up)
    assert plan() == set()  # OTHER is not alive at all here: its VIPs are taken
    book.current = BookView(at=rig.clock.now, leased=leased)  # the raise made it moot
    rig.clock.now += LEASED_WITHIN - 0.1
    assert plan() == {OTHER}  # alive and 'leased', but given up on too recently to be sure
    rig.clock.now += 0.2
    assert plan() == set()  # it has said it holds a lease since it was given up on
