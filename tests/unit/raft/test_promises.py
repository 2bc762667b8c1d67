"""Quorum-promise leases (raft/promises.py): step tables on a simulated cluster, and properties
over random schedules of loss, delay, reordering, freezes, crashes and restarts."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.promises import Echo, Heartbeat, NodeFacts, Promises, evidence_needed, quorum
from tests.unit.raft.promise_world import PERIOD, WINDOW, World

DT = 0.005


def run(world: World, seconds: float, propose: bool = True) -> None:
    for _ in range(round(seconds / DT)):
        world.step(DT, propose)


def lapses(world: World, since: float) -> list[float]:
    """Moments since `since` when nobody answered the VIP."""
    return [t for t, owners in world.owners_seen if t >= since and not owners]


def two_owners(world: World) -> list[tuple[float, frozenset[str]]]:
    return [(t, o) for t, o in world.owners_seen if len(o) > 1]


def settled(seed: int = 1) -> World:
    world = World(seed)
    run(world, 1.0)
    assert world.answering() == {"a"}
    return world


def test_quorum_sizes() -> None:
    assert [quorum(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    # Abandonments by others that meet every lease quorum (m - 1 peers of the node).
    assert [evidence_needed(n) for n in (2, 3, 4, 5)] == [1, 2, 2, 3]


def test_a_healthy_cluster_holds_its_lease_and_gives_nobody_up() -> None:
    world = settled()
    run(world, 3.0)
    assert lapses(world, 0.5) == []
    assert all(not n.book.abandoned() for n in world.nodes.values())
    assert world.takes == 0


@pytest.mark.parametrize("fault", ["crash", "freeze", "cut off"])
def test_a_failed_owner_is_replaced_within_the_window_and_never_overlaps(fault: str) -> None:
    world = settled()
    at = world.now
    if fault == "crash":
        world.crash("a")
    elif fault == "freeze":
        world.freeze("a", 2.0)
    else:
        for peer in ("b", "c"):
            world.cut("a", peer, 2.0)
            world.cut(peer, "a", 2.0)
    run(world, 3.0)
    assert two_owners(world) == []
    assert world.takes == 1
    gap = lapses(world, at)
    # The owner's lease ends a window after its last promised heartbeat; the peers give up a
    # window after their last promise, then the take commits: about W + a heartbeat or two.
    assert gap, "the owner never stopped answering"
    assert WINDOW * 0.7 < max(gap) - at < WINDOW + 4 * PERIOD, (min(gap) - at, max(gap) - at)
    assert world.answering() and "a" not in world.answering()


def test_a_thawed_owner_answers_nothing_on_its_stale_lease() -> None:
    world = settled()
    world.freeze("a", 1.0)
    run(world, 0.99)
    assert world.answering() - {"a"}, "the VIP moved during the freeze"
    run(world, 0.5)
    assert two_owners(world) == []
    assert "a" not in world.answering()


@pytest.mark.parametrize("direction", ["a->b", "b->a"])
def test_one_way_loss_keeps_the_owner_and_costs_no_lease(direction: str) -> None:
    world = settled()
    source, target = direction.split("->")
    at = world.now
    world.cut(source, target, 3.0)
    run(world, 3.0)
    # a keeps its lease on c's promises; b gives up on a, but alone it is no evidence.
    assert lapses(world, at) == []
    assert world.takes == 0
    assert ("a", 0) in world.nodes["b"].book.abandoned()
    assert world.nodes["c"].book.evidence("a") is None


def test_after_one_way_loss_the_epoch_is_raised_and_both_peers_promise_again() -> None:
    world = settled()
    world.cut("a", "b", 1.0)
    run(world, 2.5)
    assert world.state().epochs["a"] == 1  # raised once b heard a again
    assert world.takes == 0
    assert lapses(world, 0.5) == []
    for peer in ("b", "c"):
        assert world.nodes[peer].book.report(0)["a"]["promised_left"] is not None
    # With both peers' promises again, a survives losing c.
    at = world.now
    world.cut("c", "a", 2.0)
    world.cut("a", "c", 2.0)
    run(world, 2.0)
    assert lapses(world, at) == []


def test_a_restarted_peer_gives_nobody_up_before_a_window() -> None:
    """A restart forgets the promises given: the new incarnation waits a window first."""
    world = settled()
    world.crash("b")
    world.restart("b")
    book = world.nodes["b"].book
    run(world, WINDOW * 0.9, propose=False)
    assert not book.abandoned()


def test_the_leader_needs_evidence_from_enough_peers() -> None:
    book = Promises("c", ["a", "b", "c"], 7, WINDOW, started=0.0)
    facts = {"a": NodeFacts(1, 0), "b": NodeFacts(2, 0), "c": NodeFacts(7, 0)}
    book.observe_state(0.0, facts, {"a", "b", "c"})
    book.tick(1.0, stall=1.0)
    assert book.abandoned() == {("a", 0), ("b", 0)}
    assert book.evidence("a") is None  # c alone: one of the two needed
    book.receive(1.0, Heartbeat("b", 2, 0, 1, abandoned=frozenset({("a", 0)})))
    assert book.evidence("a") == {"c": 7, "b": 2}
    # An abandonment by an incarnation that is not the registered one counts for nothing.
    book.observe_state(1.0, {**facts, "b": NodeFacts(3, 0)}, {"a", "b", "c"})
    assert book.evidence("a") is None


def test_replayed_and_reordered_heartbeats_are_ignored() -> None:
    book = Promises("b", ["a", "b", "c"], 2, WINDOW, started=0.0)
    facts = {"a": NodeFacts(1, 0), "b": NodeFacts(2, 0), "c": NodeFacts(3, 0)}
    book.observe_state(0.0, facts, {"a", "b", "c"})
    book.outgoing(0.0)
    book.receive(0.01, Heartbeat("a", 1, 0, 5, echo=Echo(2, 0, 1)))
    book.receive(0.02, Heartbeat("a", 1, 0, 4, echo=Echo(2, 0, 1), abandoned=frozenset({("c", 0)})))
    assert book.report(0.02)["a"]["heard_ago"] == pytest.approx(0.01)
    assert book.evidence("c") is None


def test_a_promise_is_not_good_for_an_epoch_given_up_on() -> None:
    book = Promises("b", ["a", "b", "c"], 2, WINDOW, started=0.0)
    facts = {"a": NodeFacts(1, 0), "b": NodeFacts(2, 0), "c": NodeFacts(3, 0)}
    book.observe_state(0.0, facts, {"a", "b", "c"})
    book.tick(1.0, stall=1.0)  # never heard a: gives it up
    assert ("a", 0) in book.abandoned()
    book.outgoing(1.0)
    book.receive(1.01, Heartbeat("a", 1, 0, 1, echo=Echo(2, 0, 1)))
    out = book.outgoing(1.02)["a"]
    assert out.promised_from == 1  # only from a's next epoch on


def test_a_node_that_never_registered_is_not_given_up() -> None:
    book = Promises("b", ["a", "b", "c"], 2, WINDOW, started=0.0)
    facts = {"a": NodeFacts(None, 0), "b": NodeFacts(2, 0), "c": NodeFacts(3, 0)}
    book.observe_state(0.0, facts, {"a", "b", "c"})
    book.tick(1.0, stall=1.0)
    assert book.abandoned() == {("c", 0)}


def test_a_stall_of_its_own_delays_giving_up() -> None:
    book = Promises("b", ["a", "b", "c"], 2, WINDOW, started=0.0)
    book.observe_state(0.0, {"a": NodeFacts(1, 0), "b": NodeFacts(2, 0)}, {"a", "b"})
    book.tick(0.1, stall=0.1)
    book.tick(0.9, stall=0.1)  # a 0.8 s gap: frozen, heartbeats may wait unread
    assert not book.abandoned()
    book.tick(0.91 + WINDOW, stall=1.0)
    assert book.abandoned() == {("a", 0)}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**32 - 1), five=st.booleans())
def test_no_schedule_gives_one_vip_two_owners(seed: int, five: bool) -> None:
    """Random faults for 6 s: one-way and two-way cuts, long delays (reordering), freezes,
    crashes and restarts, lagging appliers and drifting clocks; then 2.5 s of calm."""
    members = ("a", "b", "c", "d", "e") if five else ("a", "b", "c")
    world = World(seed, members=members)
    rng = random.Random(seed ^ 0x5EED)
    run(world, 1.0)
    for node in world.nodes.values():
        node.lag = rng.choice([0.0, 0.0, 0.01, 0.05, 0.2])
    down: set[str] = set()
    for _ in range(60):
        kind = rng.random()
        name = rng.choice(members)
        if kind < 0.3:
            other = rng.choice([m for m in members if m != name])
            world.cut(name, other, rng.uniform(0.05, 1.5))
        elif kind < 0.4:
            world.delay_max = rng.choice([0.02, 0.1, 0.3])
        elif kind < 0.55:
            world.freeze(name, rng.uniform(0.05, 1.2))
        elif kind < 0.62 and len(down) < len(members) // 2:
            world.crash(name)
            down.add(name)
        elif kind < 0.75 and down:
            back = rng.choice(sorted(down))
            world.restart(back)
            down.discard(back)
        run(world, 0.1)
    assert two_owners(world) == []
    # Calm: every node back, no loss, short delays. Someone answers again.
    for back in sorted(down):
        world.restart(back)
    world.drop.clear()
    world.delay_max = 0.02
    for node in world.nodes.values():
        node.lag = 0.0
    run(world, 2.5)
    assert two_owners(world) == []
    assert world.answering(), "nobody answers after the calm"
