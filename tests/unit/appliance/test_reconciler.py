"""The reconciler's decisions, step by step against a real replicated state (no agent, no root):
what it holds, announces, forwards and acknowledges, in which order, and that it looks only at
what changed (counted)."""

from __future__ import annotations

import ipaddress
from typing import Any

from appliance.model import Backend
from appliance.reconciler import Reconciler
from raft.state import ClusterState
from tests.support.workcount import calls

ME = "n1"
INCARNATION = 7
LEASE = 0.75
ip = ipaddress.ip_address


def command(kind: str, **body: Any) -> dict[str, Any]:
    return {"v": 1, "type": kind, **body}


def pools(state: ClusterState) -> None:
    for name, block, announce in (
        ("lan", "2001:db8:100::/112", "l2"),
        ("routed", "2001:db8:200::/112", "bgp"),
    ):
        pool = {"name": name, "addresses": [block], "announce": announce}
        assert state.apply(command("pool.put", pool=pool))["ok"]


def put(state: ClusterState, i: int, pool: str = "lan", backends: int = 2) -> str:
    spec = {
        "id": f"c/ns/s{i}",
        "pool": pool,
        "ip_family": "ipv6",
        "ports": [
            {
                "port": 80,
                "backends": [
                    {"address": f"2001:db8:2::{b + 1:x}", "port": 30000 + i}
                    for b in range(backends)
                ],
            }
        ],
    }
    result = state.apply(command("service.put", service=spec))
    assert result["ok"], result
    return str(result["value"]["service"]["address"])


def renew(state: ClusterState, seq: int, sent_at: float, node: str = ME) -> None:
    renewal = {"node": node, "incarnation": INCARNATION, "seq": seq, "sent_at": sent_at}
    assert state.apply(command("lease.renew", renewal=renewal))["ok"]


def assign(state: ClusterState, placements: dict[str, dict[str, Any]]) -> None:
    result = state.apply(command("vips.assign", placements=placements, based_on={}, at=0.0))
    assert result["ok"] and not result["value"]["refused"], result


def fresh(services: int = 3) -> tuple[ClusterState, Reconciler, list[str]]:
    state = ClusterState()
    pools(state)
    vips = [put(state, i) for i in range(services)]
    assign(state, {v: {"node": ME, "reason": "new"} for v in vips})
    renew(state, 1, sent_at=100.0)
    return state, Reconciler(ME, INCARNATION, LEASE, routes=True, forwarding=True), vips


def test_first_step_holds_and_forwards_everything_assigned_here() -> None:
    state, rec, vips = fresh()
    step = rec.step(state.snapshot(), now=100.1)
    assert step.full and step.held_changed
    assert step.held == frozenset(vips) and step.until == 100.0 + LEASE
    assert sorted(map(str, step.before)) == sorted(vips) and not step.after
    assert [a.vip for a in step.taken] == sorted(ip(v) for v in vips)


def test_a_renewal_only_moves_the_deadline() -> None:
    state, rec, _ = fresh()
    rec.step(state.snapshot(), now=100.1)
    renew(state, 2, sent_at=100.1)
    step = rec.step(state.snapshot(), now=100.15)
    assert not step.held_changed and not step.full
    assert step.until == 100.1 + LEASE
    assert (step.before, step.after, step.acks, step.routed) == ({}, {}, [], None)


def test_a_renewal_costs_the_same_with_3000_vips_as_with_30() -> None:
    cost = []
    for count in (30, 3000):
        state, rec, _ = fresh(count)
        rec.step(state.snapshot(), now=100.1)
        renew(state, 2, sent_at=100.1)
        view = state.snapshot()
        cost.append(calls(lambda r=rec, v=view: r.step(v, now=100.15)))
    assert cost[1] == cost[0], cost


def test_a_written_service_touches_only_its_vip() -> None:
    cost = []
    for count in (30, 3000):
        state, rec, vips = fresh(count)
        rec.step(state.snapshot(), now=100.1)
        put(state, 1, backends=1)  # s1 loses a backend
        view = state.snapshot()
        step_cost = calls(lambda r=rec, v=view: cost.append(r.step(v, now=100.2)))
        step = cost.pop()
        cost.append(step_cost)
        assert list(map(str, step.before)) == [vips[1]] and not step.after
        assert len(step.before[ip(vips[1])][0].targets) == 1
    assert cost[1] <= cost[0] * 1.2, cost


def test_assigned_elsewhere_drops_rules_after_and_acknowledges_the_release() -> None:
    state, rec, vips = fresh()
    rec.step(state.snapshot(), now=100.1)
    assign(state, {vips[0]: {"node": None, "releasing": ME, "reason": "rebalance"}})
    step = rec.step(state.snapshot(), now=100.2)
    assert step.released == [vips[0]] and vips[0] not in step.held
    assert step.after == {ip(vips[0]): ()} and not step.before
    assert step.acks == [vips[0]]
    # Not acknowledged again at once; again after a second if the release is still pending.
    assert rec.step(state.snapshot(), now=100.3).acks == []
    assert rec.step(state.snapshot(), now=101.25).acks == [vips[0]]
    ack = command("vips.released", node=ME, vips=[vips[0]])
    assert state.apply(ack)["ok"]
    assert rec.step(state.snapshot(), now=103.0).acks == []


def test_a_lapsed_lease_drops_everything() -> None:
    state, rec, vips = fresh()
    rec.step(state.snapshot(), now=100.1)
    step = rec.step(state.snapshot(), now=100.0 + LEASE)
    assert step.full and step.held == frozenset() and step.until == 0.0
    assert sorted(map(str, step.after)) == sorted(vips)
    # Renewed again: everything comes back.
    renew(state, 2, sent_at=101.0)
    back = rec.step(state.snapshot(), now=101.1)
    assert back.held == frozenset(vips) and sorted(map(str, back.before)) == sorted(vips)


def test_a_vip_held_again_under_the_same_assignment_after_a_lapse_is_resumed_not_taken() -> None:
    state, rec, vips = fresh()
    assert len(rec.step(state.snapshot(), now=100.1).taken) == 3
    rec.step(state.snapshot(), now=100.0 + LEASE)  # lapsed
    # Meanwhile the leader gave vips[0] to n2 and back: a new assignment (a higher epoch).
    for node, based_on in (("n2", {ME: [INCARNATION, 1]}), (ME, {})):
        placement = {vips[0]: {"node": node, "reason": "dead", "dead_for": 0.9}}
        assign_cmd = command("vips.assign", placements=placement, based_on=based_on, at=0.0)
        assert state.apply(assign_cmd)["value"]["changed"] == [vips[0]]
    renew(state, 2, sent_at=101.0)
    back = rec.step(state.snapshot(), now=101.1)
    assert back.held == frozenset(vips)
    assert [str(a.vip) for a in back.taken] == [vips[0]]
    assert sorted(str(a.vip) for a in back.resumed) == sorted(vips[1:])


def test_a_backend_going_down_changes_only_its_vip() -> None:
    state, rec, vips = fresh()
    rec.step(state.snapshot(), now=100.1)
    down = ip("2001:db8:2::1")

    def healthy(service_id: str, backend: Backend) -> bool:
        return not (service_id == "c/ns/s2" and backend.address == down)

    step = rec.step(state.snapshot(), now=100.2, healthy=healthy, health_changed={"c/ns/s2"})
    assert list(map(str, step.before)) == [vips[2]]
    assert [str(t.address) for t in step.before[ip(vips[2])][0].targets] == ["2001:db8:2::2"]


def test_routed_vips_announced_while_able_and_served_withdrawn_when_drained() -> None:
    state, rec, _ = fresh()
    routed = put(state, 10, pool="routed")
    step = rec.step(state.snapshot(), now=100.1)
    assert step.routed is not None and list(step.routed) == [routed]
    assert ip(routed) in step.before  # forwarded here too, before the announcement
    assert state.apply(command("member.report", report=_report()))["ok"]
    assert state.apply(command("node.drain", node=ME, drained=True))["ok"]
    drained = rec.step(state.snapshot(), now=100.2)
    assert drained.routed == {} and drained.withdrawn == [routed]
    # The withdraw grace is the routed VIP's; the lease still ends when it ends.
    assert drained.until == 100.0 + LEASE
    # Drained stops routed announcements only; layer-2 VIPs follow the assignment.
    assert drained.held == rec.held and not drained.held_changed
    # The routers need a moment to act on the withdraw: forwarding goes on for the grace...
    assert ip(routed) not in drained.after
    assert ip(routed) not in rec.step(state.snapshot(), now=100.2 + 0.9).after
    # ...then the rules go.
    assert rec.step(state.snapshot(), now=100.2 + 1.0).after == {ip(routed): ()}


def test_no_healthy_backend_withdraws_the_route_but_a_layer2_vip_rejects() -> None:
    state, rec, vips = fresh()
    routed = put(state, 10, pool="routed")
    rec.step(state.snapshot(), now=100.1)
    step = rec.step(
        state.snapshot(),
        now=100.2,
        healthy=lambda sid, b: False,
        health_changed={"c/ns/s10", "c/ns/s0"},
    )
    assert step.withdrawn == [routed] and ip(routed) not in step.after  # kept for the grace
    # The layer-2 VIP stays held, its port rejects (a forward without targets).
    assert vips[0] in step.held
    assert step.before[ip(vips[0])][0].targets == ()


def _report() -> dict[str, Any]:
    return {
        "node": ME,
        "raft_address": "192.0.2.11:7001",
        "version": "1",
        "started_at": 0.0,
        "reported_at": 0.0,
    }
