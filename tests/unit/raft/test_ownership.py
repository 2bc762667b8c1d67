"""Ownership under leases, the pure parts: renewals, the leader's plan, apply-time refusals."""

from __future__ import annotations

from typing import Any

from appliance.model import LeaseRenewal
from raft.ownership import Liveness, lease_deadline
from raft.planner import plan_assignments
from raft.state import ClusterState

VIP = "192.0.2.200"


def ok(state: ClusterState, command: dict[str, Any]) -> Any:
    result = state.apply({"v": 1, **command})
    assert result["ok"], result
    return result["value"]


def renew(state: ClusterState, node: str, seq: int, incarnation: int = 1, at: float = 0.0) -> None:
    renewal = {"node": node, "incarnation": incarnation, "seq": seq, "sent_at": at}
    ok(state, {"type": "lease.renew", "renewal": renewal})


def assign(state: ClusterState, placements: dict[str, Any], based_on: dict[str, Any]) -> Any:
    return ok(
        state, {"type": "vips.assign", "placements": placements, "based_on": based_on, "at": 100.0}
    )


def with_service(nodes: list[str] | None = None) -> ClusterState:
    state = ClusterState()
    ok(
        state,
        {"type": "pool.put", "pool": {"name": "lan", "addresses": ["192.0.2.200-192.0.2.210"]}},
    )
    ok(
        state,
        {
            "type": "service.put",
            "service": {"id": "k/ns/web", "ports": [{"port": 80}], "nodes": nodes},
        },
    )
    return state


def test_lease_deadline_uses_the_nodes_own_send_time_and_incarnation() -> None:
    state = ClusterState()
    renew(state, "n1", seq=5, at=40.0)
    assert lease_deadline(state.renewals, "n1", 1, 0.75) == 40.75
    assert lease_deadline(state.renewals, "n1", 2, 0.75) is None  # an older agent's lease
    assert lease_deadline(state.renewals, "n2", 1, 0.75) is None
    renew(state, "n1", seq=4, at=99.0)  # older seq arriving late: ignored
    assert state.renewals["n1"].seq == 5


def test_taking_a_vip_from_a_node_that_renewed_since_is_refused() -> None:
    state = with_service()
    renew(state, "n1", 1)
    assign(state, {VIP: {"node": "n1"}}, {})
    renew(state, "n1", 2)  # n1 is alive: a renewal committed after the leader's last look
    value = assign(state, {VIP: {"node": "n2"}}, {"n1": [1, 1]})
    assert value == {"changed": [], "refused": [VIP]}
    assert state.assignments[VIP].node == "n1"
    value = assign(state, {VIP: {"node": "n2"}}, {"n1": [1, 2]})  # n1 really went silent
    assert value["changed"] == [VIP]
    assert state.assignments[VIP].node == "n2"
    assert state.assignments[VIP].epoch == 2


def test_release_needs_no_check_and_the_ack_clears_it() -> None:
    state = with_service()
    renew(state, "n1", 1)
    assign(state, {VIP: {"node": "n1"}}, {})
    renew(state, "n1", 2)
    assign(state, {VIP: {"node": None, "releasing": "n1"}}, {})
    assert state.assignments[VIP].node is None
    assert state.assignments[VIP].releasing == "n1"
    # Giving it away before the acknowledgement, with a stale view of n1, is refused.
    assert assign(state, {VIP: {"node": "n2"}}, {"n1": [1, 1]})["refused"] == [VIP]
    ok(state, {"type": "vips.released", "node": "n1", "vips": [VIP]})
    assert state.assignments[VIP].releasing is None
    assert assign(state, {VIP: {"node": "n2"}}, {"n1": [1, 1]})["changed"] == [VIP]


def test_liveness_new_leader_waits_a_full_period() -> None:
    state = ClusterState()
    renew(state, "n1", 1)
    live = Liveness(dead_after=0.8)
    live.reset(10.0, state.renewals)
    assert live.alive("n1", 10.7)
    assert not live.alive("n1", 10.9)
    renew(state, "n1", 2)
    live.observe(10.85, state.renewals)
    assert live.alive("n1", 11.6)
    assert not live.alive("n2", 10.0)


def test_new_leader_counts_from_what_it_saw_as_a_follower() -> None:
    state = ClusterState()
    renew(state, "n1", 1)
    renew(state, "n2", 1)
    as_follower = Liveness(dead_after=0.8)
    as_follower.observe(9.5, state.renewals)  # both renewals applied at 9.5 on this node
    renew(state, "n2", 2)  # applied, but not yet observed when leadership starts
    renew(state, "n3", 1)  # never observed
    live = Liveness(dead_after=0.8)
    live.reset(10.0, state.renewals, as_follower)
    assert not live.alive("n1", 10.31)  # 9.5 + 0.8: the election overlapped the wait
    assert live.alive("n2", 10.79) and not live.alive("n2", 10.81)  # a newer mark: from now
    assert live.alive("n3", 10.79)


def test_plan_moves_a_live_owner_break_before_make_and_a_dead_one_directly() -> None:
    state = with_service()
    members = ["n1", "n2", "n3"]
    first = plan_assignments(
        members, set(), state.services, state.assignments, {"n1", "n2", "n3"}, 1.0, {}
    )
    assert first is not None
    owner = first.placements[VIP].node
    assert owner in members
    state.apply({"v": 1, **first.model_dump(mode="json")})
    # Nothing changed: no decision.
    assert (
        plan_assignments(members, set(), state.services, state.assignments, set(members), 2.0, {})
        is None
    )
    # The owner is drained while alive: release first.
    drained = plan_assignments(
        members, {owner}, state.services, state.assignments, set(members), 3.0, {}
    )
    assert drained is not None
    assert drained.placements[VIP].node is None
    assert drained.placements[VIP].releasing == owner
    # The owner dies instead: straight to another node.
    dead = plan_assignments(
        members, set(), state.services, state.assignments, set(members) - {owner}, 3.0, {}
    )
    assert dead is not None
    assert dead.placements[VIP].node not in (None, owner)


def apply_plan(state: ClusterState, members: list[str], **kw: Any) -> dict[str, Any]:
    decision = plan_assignments(
        members,
        kw.get("drained", set()),
        state.services,
        state.assignments,
        kw.get("alive", set(members)),
        kw.get("at", 1.0),
        {},
        kw.get("ages"),
    )
    assert decision is not None
    state.apply({"v": 1, **decision.model_dump(mode="json")})
    return decision.model_dump(mode="json")["placements"]


def test_every_change_of_owner_says_why_and_from_where() -> None:
    state = with_service()
    members = ["n1", "n2", "n3"]
    apply_plan(state, members)
    first = state.assignments[VIP]
    assert (first.reason, first.previous, first.since) == ("new", None, 1.0)
    owner = str(first.node)
    # A drain: release (reason drain), acknowledge, then give it to another node (still drain,
    # and still from the drained node).
    apply_plan(state, members, drained={owner}, at=2.0)
    assert (state.assignments[VIP].reason, state.assignments[VIP].previous) == ("drain", owner)
    ok(state, {"type": "vips.released", "node": owner, "vips": [VIP]})
    apply_plan(state, members, drained={owner}, at=3.0)
    moved = state.assignments[VIP]
    assert moved.node not in (None, owner)
    assert (moved.reason, moved.previous, moved.since) == ("drain", owner, 3.0)
    # Its owner dies: a failover, with how long the leader had not seen it renew.
    dead = str(moved.node)
    alive = set(members) - {dead}
    placements = apply_plan(state, members, drained={owner}, alive=alive, ages={dead: 0.84}, at=4.0)
    assert placements[VIP]["reason"] == "dead"
    after = state.assignments[VIP]
    assert (after.reason, after.previous, after.dead_for, after.since) == ("dead", dead, 0.84, 4.0)
    assert after.epoch == moved.epoch + 1


def test_plan_honours_service_node_constraints() -> None:
    state = with_service(nodes=["n3"])
    decision = plan_assignments(
        ["n1", "n2", "n3"], set(), state.services, state.assignments, {"n1", "n2", "n3"}, 1.0, {}
    )
    assert decision is not None
    assert decision.placements[VIP].node == "n3"


def test_ownership_survives_the_dump() -> None:
    state = with_service()
    renew(state, "n1", 1)
    assign(state, {VIP: {"node": "n1"}}, {})
    ok(
        state,
        {
            "type": "member.report",
            "report": {
                "node": "n1",
                "raft_address": "192.0.2.11:7001",
                "version": "1",
                "started_at": 1.0,
                "reported_at": 2.0,
            },
        },
    )
    ok(state, {"type": "node.drain", "node": "n1", "drained": True})
    again = ClusterState.from_data(state.to_data())
    assert again.assignments == state.assignments
    assert again.renewals == state.renewals
    assert again.drained == {"n1"}
    assert isinstance(again.renewals["n1"], LeaseRenewal)


def test_a_node_is_settled_after_renewing_for_the_warmup_without_a_gap() -> None:
    live = Liveness(dead_after=0.85)
    seq = 0

    def renew_until(end: float, start: float, incarnation: int = 1) -> None:
        nonlocal seq
        now = start
        while now <= end + 1e-9:
            seq += 1
            mark = LeaseRenewal(node="n1", incarnation=incarnation, seq=seq, sent_at=now)
            live.observe(now, {"n1": mark})
            now = round(now + 0.1, 6)

    renew_until(4.0, 0.0)
    assert not live.settled("n1", 4.0, warmup=5.0)
    renew_until(5.0, 4.1)
    assert live.settled("n1", 5.0, warmup=5.0)
    renew_until(6.0, 5.1, incarnation=2)  # restarted: a new incarnation starts over
    assert not live.settled("n1", 6.0, warmup=5.0)
    renew_until(10.1, 6.1, incarnation=2)
    assert live.settled("n1", 10.1, warmup=5.0)
    renew_until(12.0, 12.0, incarnation=2)  # a gap past dead_after starts over too
    assert not live.settled("n1", 12.0, warmup=5.0)
