"""Connections in a bgp pool when a node leaves the router's ECMP group (issue 19's study).

The source backends see stays the forwarding node's own address (a VIP source cannot work
behind ECMP, see README), so a connection survives when the router keeps it on its node, and is
reset (by the backend, which sees a new source address) when the router moves it: every
connection through the node that left is reset, and every one that goes on does so through the
same node to the same backend. (The kernel's `ip route get ... sport` did not predict the
router's real choice for forwarded packets, so what the router kept is read from the answers.)
Consistent hashing still sends a moved flow to the same backend: what it lacks is a way back
for the replies."""

from __future__ import annotations

import time

import pytest

from appliance.lab import topology
from appliance.lab.bench_bgp import wait_hops
from appliance.lab.continuity import Flow, Flows, verdict
from tests.lab.labkit import MakeLab

pytestmark = [pytest.mark.timeout(240), pytest.mark.needs_bird]

CONNECTIONS = 60


def test_a_node_leaving_ecmp_costs_only_the_connections_the_router_moves(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(router=True)
    nodes = lab.node_names()
    leader = lab.wait_leader()
    pool = {"addresses": [topology.BGP_VIPS4], "default": True, "announce": "bgp"}
    assert lab.api(leader, "PUT", "/v1/pools/routed", pool) is not None
    hosts = [str(h.ipv4) for h in lab.plan.of_kind("backend")]
    backends = [{"address": a, "port": topology.BACKEND_TCP_PORT} for a in hosts]
    body = {"ports": [{"port": topology.BACKEND_TCP_PORT, "backends": backends}]}
    answer = lab.api(leader, "PUT", "/v1/services/t/c/echo", body)
    assert answer is not None
    vip = str(answer["address"])
    wait_hops(lab, vip, nodes)
    victim = next(n for n in nodes if n != leader)
    holder = lab.in_ns("client")
    try:
        flows = holder.run(Flows, vip, topology.BACKEND_TCP_PORT, 0, CONNECTIONS, 0)
        holder.run(flows.run, 1.0)
        at = time.monotonic()
        assert lab.api(leader, "POST", f"/v1/nodes/{victim}/drain") is not None
        wait_hops(lab, vip, [n for n in nodes if n != victim])
        holder.run(flows.run, 3.0)
        end = time.monotonic()
        holder.run(flows.close)
    finally:
        holder.close()
    gone = str(lab.plan.host(victim).ipv4)
    through_victim = [f for f in flows.flows if last_peer(f, at) == gone]
    others = [f for f in flows.flows if last_peer(f, at) != gone]
    assert through_victim and others, (len(through_victim), len(others))
    assert verdict(through_victim, at, end).survived == 0  # moved by the router: reset
    survivors = [f for f in others if f.broke is None]
    assert survivors, "the router moved every connection of the nodes that stayed"
    for flow in survivors:
        after = {(backend, peer) for t, backend, peer in flow.answers if t > at}
        assert after == {flow.answers[0][1:]}, flow  # same node, same backend throughout
    print(
        f"\n{len(flows.flows)} connections: {len(through_victim)} through {victim} (reset), "
        f"{len(survivors)} of {len(others)} on the nodes that stayed survived"
    )


def last_peer(flow: Flow, at: float) -> str:
    return [peer for t, _, peer in flow.answers if t <= at][-1]
