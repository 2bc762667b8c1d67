"""The leader's incremental planner: each decision, committed, leaves a right assignment, and
it reschedules only what changed (counted), until the nodes' facts change."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.planner import LeaderPlanner, plan_assignments
from raft.state import ClusterState
from tests.support.workcount import calls

MEMBERS = ["n1", "n2", "n3"]
FAST = settings(
    max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def pool() -> dict[str, Any]:
    return {
        "v": 1,
        "type": "pool.put",
        "pool": {"name": "v6", "addresses": ["2001:db8:100::/112"], "default": True},
    }


def put(i: int, nodes: list[str] | None = None, key: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": f"c/ns/s{i}", "ip_family": "ipv6", "ports": [{"port": 80 + i}]}
    if nodes is not None:
        spec["nodes"] = nodes
    if key is not None:
        spec["sharing_key"] = key
    return {"v": 1, "type": "service.put", "service": spec}


def delete(i: int) -> dict[str, Any]:
    return {"v": 1, "type": "service.delete", "id": f"c/ns/s{i}"}


def commit(state: ClusterState, planner: LeaderPlanner, alive: set[str], now: float) -> int:
    """Plan and commit like the leader loop; the number of placements."""
    decision = planner.plan(state.snapshot(), alive, now, now, {})
    if decision is None:
        return 0
    assert state.apply(decision.model_dump(mode="json"))["ok"]
    # Old owners acknowledge releases at once (they are alive and well).
    for vip, placement in decision.placements.items():
        if placement.releasing is not None:
            ack = {"v": 1, "type": "vips.released", "node": placement.releasing, "vips": [vip]}
            assert state.apply(ack)["ok"]
    return len(decision.placements)


def settle(state: ClusterState, planner: LeaderPlanner, alive: set[str], now: float) -> None:
    for _ in range(10):
        if not commit(state, planner, alive, now):
            return
    raise AssertionError("the planner keeps deciding")


def check(state: ClusterState, alive: set[str]) -> None:
    """Every VIP with services is owned by an alive node its services allow; no other is."""
    wanted: dict[str, frozenset[str] | None] = {}
    for service in state.services.values():
        vip = str(service.address)
        mine = frozenset(service.spec.nodes) if service.spec.nodes is not None else None
        have = wanted.get(vip)
        wanted[vip] = mine if have is None else (have if mine is None else have & mine)
    for vip, assignment in state.assignments.items():
        if vip not in wanted:
            assert assignment.node is None, assignment
            continue
        allowed = wanted[vip]
        options = alive if allowed is None else alive & allowed
        if options:
            assert assignment.node in options, (vip, assignment, options)
        else:
            assert assignment.node is None
    assert set(wanted) <= {v for v, a in state.assignments.items() if a.node} | {
        v for v, allowed in wanted.items() if not (alive if allowed is None else alive & allowed)
    }


steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 30), st.none()),
        st.tuples(st.just("put"), st.integers(0, 30), st.sampled_from([["n1"], ["n2", "n3"]])),
        st.tuples(st.just("share"), st.integers(0, 30), st.none()),
        st.tuples(st.just("delete"), st.integers(0, 30), st.none()),
        st.tuples(st.just("kill"), st.sampled_from(MEMBERS), st.none()),
        st.tuples(st.just("revive"), st.sampled_from(MEMBERS), st.none()),
    ),
    max_size=40,
)


@FAST
@given(steps)
def test_every_decision_leaves_a_right_assignment(script: list[tuple[str, Any, Any]]) -> None:
    state = ClusterState()
    assert state.apply(pool())["ok"]
    planner = LeaderPlanner(MEMBERS, full_every=1e9)
    alive = set(MEMBERS)
    for now, (action, arg, nodes) in enumerate(script):
        if action == "put":
            state.apply(put(arg, nodes))
        elif action == "share":
            state.apply(put(arg, key="shared"))
        elif action == "delete":
            state.apply(delete(arg))
        elif action == "kill":
            alive.discard(arg)
        else:
            alive.add(arg)
        settle(state, planner, alive, float(now))
        check(state, alive)


def test_new_services_alone_keep_the_nodes_balanced() -> None:
    """Writing services one by one and in batches: placed among the others' loads, so a full
    pass finds nothing to move (no `rebalance` while services are written)."""
    state = ClusterState()
    assert state.apply(pool())["ok"]
    planner = LeaderPlanner(MEMBERS, full_every=1e9)
    alive = set(MEMBERS)
    for i in range(60):
        if i % 10 == 0:
            batch = {"v": 1, "type": "batch", "commands": [put(100 + i + j) for j in range(7)]}
            assert state.apply(batch)["ok"]
        assert state.apply(put(i))["ok"]
        settle(state, planner, alive, float(i))
        counts = Counter(a.node for a in state.assignments.values())
        assert max(counts.values()) - min(counts.values()) <= 1
        assert {a.reason for a in state.assignments.values()} == {"new"}
    full = plan_assignments(MEMBERS, set(), state.services, state.assignments, alive, 0.0, {})
    assert full is None
    assert planner.full_passes == 1


def test_a_write_plans_only_what_it_changed() -> None:
    """The 2,000th service costs the leader what the 20th did (counted calls); a node's death
    still reschedules everything."""
    state = ClusterState()
    assert state.apply(pool())["ok"]
    planner = LeaderPlanner(MEMBERS, full_every=1e9)
    alive = set(MEMBERS)
    work = {}
    for i in range(2000):
        assert state.apply(put(i))["ok"]
        if i + 1 in (20, 2000):
            work[i + 1] = calls(lambda n=float(i): commit(state, planner, alive, n))
        else:
            commit(state, planner, alive, float(i))
    assert work[2000] <= work[20] * 1.5, work
    before = planner.full_passes
    alive.discard("n2")
    moved = commit(state, planner, alive, 3000.0)
    assert planner.full_passes == before + 1
    assert moved == sum(1 for a in state.assignments.values() if a.previous == "n2")
    assert all(a.node != "n2" for a in state.assignments.values())


def test_a_returning_node_takes_its_share_in_paced_steps() -> None:
    """600 VIPs on two nodes, the third comes back: at most MAX_MOVES planned moves start per
    decision, the next ones `move_every` later, until the three are balanced."""
    state = ClusterState()
    assert state.apply(pool())["ok"]
    planner = LeaderPlanner(MEMBERS, full_every=1e9, max_moves=50, move_every=0.5)
    for i in range(300):
        assert state.apply(put(i))["ok"]
    settle(state, planner, {"n1", "n2"}, 0.0)
    moves = []
    now = 10.0
    for _ in range(20):
        decision = planner.plan(state.snapshot(), set(MEMBERS), now, now, {})
        started = [p for p in (decision.placements.values() if decision else []) if p.releasing]
        moves.append(len(started))
        if decision is not None:
            assert state.apply(decision.model_dump(mode="json"))["ok"]
            for vip, p in decision.placements.items():
                if p.releasing:
                    ack = {"v": 1, "type": "vips.released", "node": p.releasing, "vips": [vip]}
                    assert state.apply(ack)["ok"]
            settle(state, planner, set(MEMBERS), now)  # the second halves
        now += 0.5
    counts = Counter(a.node for a in state.assignments.values())
    assert sorted(counts.values()) == [100, 100, 100]
    assert max(moves) == 50 and sum(moves) == 100
    assert {a.reason for a in state.assignments.values() if a.node == "n3"} == {"rebalance"}


def test_a_new_leader_that_avoids_vips_hands_its_own_over_in_planned_moves() -> None:
    """`vips_on_leader: avoid`: n1, elected while holding VIPs, releases each of them (break
    before make) to the others, paced; new VIPs never land on it; if the others die, it is
    the last resort."""
    state = ClusterState()
    assert state.apply(pool())["ok"]
    settle(state, LeaderPlanner(MEMBERS, full_every=1e9), set(MEMBERS), 0.0)
    for i in range(30):
        assert state.apply(put(i))["ok"]
    settle(state, LeaderPlanner(MEMBERS, full_every=1e9), set(MEMBERS), 0.0)
    held = {v for v, a in state.assignments.items() if a.node == "n1"}
    assert len(held) == 10
    planner = LeaderPlanner(MEMBERS, full_every=1e9, max_moves=4, spare="n1")
    first = planner.plan(state.snapshot(), set(MEMBERS), 1.0, 1.0, {})
    assert first is not None
    assert {v for v, p in first.placements.items() if p.releasing == "n1"} <= held
    assert len(first.placements) == 4  # paced like any planned move
    for now in range(1, 8):
        commit(state, planner, set(MEMBERS), float(now))
        settle(state, planner, set(MEMBERS), float(now))
    counts = Counter(a.node for a in state.assignments.values())
    assert counts == {"n2": 15, "n3": 15}
    assert {state.assignments[v].reason for v in held} == {"rebalance"}
    assert state.apply(put(99))["ok"]
    settle(state, planner, set(MEMBERS), 20.0)
    assert Counter(a.node for a in state.assignments.values())["n1"] == 0
    settle(state, planner, {"n1"}, 30.0)  # n2 and n3 gone: the leader holds them all
    assert {a.node for a in state.assignments.values()} == {"n1"}
