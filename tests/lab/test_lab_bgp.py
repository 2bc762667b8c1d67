"""BGP mode end to end: agents with exabgp, a real router with ECMP, the client behind it.

Each test builds a lab with `--router bird` or `--router frr` (most tests run against both): the
client sits on its own link behind the router, so it reaches routed VIPs only through the routes
the router learned from the nodes. What the router installs in its kernel table (`ip route`) is
what the tests look at. Both routers are configured as `docs/routers.md` tells operators to.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from appliance.lab import netns, routers, topology
from appliance.lab.netlab import NetLab
from appliance.lab.outage import forwarders, outages, summary_line
from appliance.lab.prober import read_samples
from appliance.lab.routers import ROUTERS, Frr, received
from tests.lab.labkit import MakeLab, wait_for
from tests.lab.test_lab_ownership import metrics_text

pytestmark = pytest.mark.timeout(240)
HOLD = 3.0


def setup(lab: NetLab) -> tuple[str, str]:
    """A `bgp` pool (with a community) and an IPv4 and an IPv6 service; their VIPs."""
    leader = lab.wait_leader()
    pool = {
        "addresses": [topology.BGP_VIPS4, topology.BGP_VIPS6],
        "announce": "bgp",
        "bgp": {"communities": ["64512:100"]},
    }
    assert lab.api(leader, "PUT", "/v1/pools/routed", pool) is not None
    vips = []
    for family in ("ipv4", "ipv6"):
        backends = [
            {"address": str(getattr(h, family)), "port": topology.BACKEND_HTTP_PORT}
            for h in lab.plan.of_kind("backend")
        ]
        body = {"ip_family": family, "ports": [{"port": 80, "backends": backends}]}
        answer = lab.api(leader, "PUT", f"/v1/services/t/default/web-{family}", body)
        assert answer is not None
        vips.append(str(answer["address"]))
    return vips[0], vips[1]


def node_ips(lab: NetLab, family: str = "ipv4") -> dict[str, str]:
    return {h.name: str(getattr(h, family)) for h in lab.plan.of_kind("node")}


def wait_hops(lab: NetLab, vip: str, nodes: list[str], timeout: float = 20.0) -> float:
    """Wait until the router's route to `vip` goes exactly via `nodes`; seconds it took."""
    family = "ipv6" if ":" in vip else "ipv4"
    want = {node_ips(lab, family)[n] for n in nodes}
    started = time.monotonic()
    wait_for(lambda: lab.next_hops(vip) == want or None, timeout, f"{vip} via {sorted(nodes)}")
    return time.monotonic() - started


def probe(lab: NetLab, vip: str, seconds: float, name: str, during: object = None) -> list:  # type: ignore[type-arg]
    from appliance.lab.bench import run_prober

    return read_samples(run_prober(lab, name, vip, "http", seconds, during))


@pytest.fixture(params=ROUTERS)
def bgp_lab(make_lab: MakeLab, request: pytest.FixtureRequest) -> tuple[NetLab, str, str]:
    lab = make_lab(router=request.param)
    vip4, vip6 = setup(lab)
    nodes = lab.node_names()
    wait_hops(lab, vip4, nodes)
    wait_hops(lab, vip6, nodes)
    return lab, vip4, vip6


def communities(lab: NetLab, vip: str) -> str:
    """The router's own words for the path attributes of its routes to `vip`."""
    if lab.router_kind == "frr":
        return Frr().vtysh(lab, f"show bgp ipv4 unicast {vip}/32")
    ctl = str(lab.dir / "router" / "bird.ctl")
    argv = ["birdc", "-s", ctl, "show", "route", "all", "for", vip]
    return str(lab.exec("router", argv, capture_output=True, text=True).stdout)


def test_every_node_announces_the_router_spreads_flows_and_sees_communities(
    bgp_lab: tuple[NetLab, str, str],
) -> None:
    lab, vip4, vip6 = bgp_lab
    shown = communities(lab, vip4)
    # BIRD writes a community (64512,100), FRR 64512:100.
    assert "(64512,100)" in shown or "Community: 64512:100" in shown, shown
    samples = probe(lab, vip4, 2.0, "spread")
    assert not outages(samples), summary_line(samples)
    by_node = forwarders(samples, {ip: n for n, ip in node_ips(lab).items()})
    print(f"flows per node: {by_node}")
    assert set(by_node) == set(lab.node_names()), by_node  # ECMP over all three
    six = probe(lab, vip6, 1.0, "six")
    assert not outages(six), summary_line(six)
    status = lab.api("n1", "GET", "/v1/status")["bgp"]
    assert status["announcing"] and set(status["peers"].values()) == {"up"}
    assert sorted(status["routes"]) == sorted([f"{vip4}/32", f"{vip6}/128"])
    router = str(lab.plan.host("router").ipv4)
    metrics = metrics_text(lab, "n1")
    assert f'raftlb_bgp_session_up{{peer="{router}"}} 1.0' in metrics
    assert "raftlb_bgp_routes_announced 2.0" in metrics
    vips = {v["address"]: v for v in lab.api("n1", "GET", "/v1/vips")}
    assert vips[vip4]["bgp_announced_here"] is True and vips[vip4]["node"] is None


def test_drain_withdraws_without_failing_new_connections(bgp_lab: tuple[NetLab, str, str]) -> None:
    lab, vip4, _ = bgp_lab
    nodes = lab.node_names()

    def drain() -> None:
        time.sleep(0.5)
        assert lab.api(nodes[0], "POST", f"/v1/nodes/{nodes[0]}/drain") is not None
        wait_hops(lab, vip4, nodes[1:])

    samples = probe(lab, vip4, 3.0, "drain", drain)
    assert not outages(samples), summary_line(samples)
    assert lab.api(nodes[0], "POST", f"/v1/nodes/{nodes[0]}/undrain") is not None
    wait_hops(lab, vip4, nodes)


def test_agent_kill_closes_the_session_and_leaves_no_exabgp(
    bgp_lab: tuple[NetLab, str, str],
) -> None:
    lab, vip4, _ = bgp_lab
    nodes = lab.node_names()
    victim = nodes[1]
    lab.crash(victim, "kill")
    took = wait_hops(lab, vip4, [n for n in nodes if n != victim])
    print(f"kill -9 of {victim}'s agent: route withdrawn {took:.2f}s later")
    assert took < HOLD, "the session should close at once, not after the hold time"
    left = [p for p in netns.pids_in(lab.plan.host(victim).netns)]
    assert left == [], f"processes left in {victim}: {left}"
    samples = probe(lab, vip4, 1.0, "after-kill")
    assert not outages(samples), summary_line(samples)


def test_silent_node_is_dropped_after_the_hold_time(bgp_lab: tuple[NetLab, str, str]) -> None:
    lab, vip4, _ = bgp_lab
    nodes = lab.node_names()
    victim = nodes[2]
    lab.crash(victim, "link")
    took = wait_hops(lab, vip4, nodes[:2], timeout=HOLD + 10)
    print(f"{victim} cut off: route gone {took:.2f}s later (hold time {HOLD:g}s)")
    lab.recover(victim, "link")
    wait_hops(lab, vip4, nodes, timeout=30)


def test_a_node_without_a_healthy_backend_withdraws(bgp_lab: tuple[NetLab, str, str]) -> None:
    lab, vip4, _ = bgp_lab
    nodes = lab.node_names()
    blind = nodes[0]
    # That node alone can no longer reach the backends: its health checks fail.
    block = "table inet blind {\n chain out {\n type filter hook output priority 0;\n"
    block += " tcp dport 80 drop\n }\n}\n"
    result = lab.exec(blind, ["nft", "-f", "-"], input=block, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    wait_hops(lab, vip4, nodes[1:])
    lab.exec(blind, ["nft", "delete", "table", "inet", "blind"], capture_output=True)
    wait_hops(lab, vip4, nodes)


def test_quorum_loss_makes_the_minority_withdraw(bgp_lab: tuple[NetLab, str, str]) -> None:
    lab, vip4, _ = bgp_lab
    nodes = lab.node_names()
    for node in nodes[1:]:
        lab.crash(node, "kill")
    took = wait_hops(lab, vip4, [])
    print(f"quorum lost: {nodes[0]} withdrew {took:.2f}s after the kills")


def test_exabgp_killed_under_the_agent_is_restarted(bgp_lab: tuple[NetLab, str, str]) -> None:
    lab, vip4, _ = bgp_lab
    nodes = lab.node_names()
    node = nodes[0]
    # Only this node's exabgp: the namespaces share one pid space, so no pgrep.
    pids = [
        pid
        for pid in netns.pids_in(lab.plan.host(node).netns)
        if "exabgp server"
        in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    ]
    assert pids, "no exabgp running"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_hops(lab, vip4, nodes[1:])
    wait_hops(lab, vip4, nodes, timeout=30)
    status = lab.api(node, "GET", "/v1/status")["bgp"]
    assert status["restarts"] >= 1 and status["announcing"], status
    print(f"exabgp restarted ({status['restarts']} restart), routes back", file=sys.stderr)


def test_a_graceful_stop_withdraws_before_it_stops_forwarding(
    bgp_lab: tuple[NetLab, str, str],
) -> None:
    lab, vip4, _ = bgp_lab
    nodes = lab.node_names()
    victim = nodes[0]
    pid = lab.pid(f"agent-{victim}")
    assert pid is not None

    def stop() -> None:
        time.sleep(0.5)
        os.kill(pid, signal.SIGTERM)  # what systemd does on `systemctl stop`
        wait_hops(lab, vip4, nodes[1:])

    samples = probe(lab, vip4, 2.5, "graceful", stop)
    assert not outages(samples), summary_line(samples)


def test_a_router_restart_gets_every_path_back_without_an_operator(
    bgp_lab: tuple[NetLab, str, str],
) -> None:
    """FRR comes back as its init script starts it: bgpd first, the configuration through
    vtysh after, so the nodes may meet it before its route-maps exist (everything denied).
    Route refresh is what brings their routes back; twice, as one restart proves little."""
    lab, vip4, vip6 = bgp_lab
    nodes = lab.node_names()
    for attempt in range(2):
        lab.lab_router.restart(lab)
        took = wait_hops(lab, vip4, nodes, timeout=30)
        wait_hops(lab, vip6, nodes, timeout=30)
        print(f"{lab.router_kind} restart {attempt + 1}: every path back {took:.2f}s later")
    addresses = node_ips(lab)
    accepted = received(lab, lab.router_kind)
    assert {accepted.get(addresses[n]) for n in nodes} == {2}, accepted  # both VIPs, each node


def test_a_policy_change_on_the_router_applies_to_the_paths_it_has(
    bgp_lab: tuple[NetLab, str, str],
) -> None:
    """No `clear bgp`: denying drops the paths, permitting again asks the nodes (route
    refresh) for the routes the router threw away."""
    lab, vip4, _ = bgp_lab
    nodes = lab.node_names()
    lab.lab_router.set_policy(lab, accept=False)
    wait_hops(lab, vip4, [])
    lab.lab_router.set_policy(lab, accept=True)
    took = wait_hops(lab, vip4, nodes)
    print(f"{lab.router_kind}: paths back {took:.2f}s after the policy permitted them again")
    # The nodes saw the router ask: what `raftlb status` shows of the re-read.
    router = str(lab.plan.host("router").ipv4)
    for node in nodes:
        session = lab.api(node, "GET", "/v1/status")["bgp"]["sessions"][router]
        assert session["refreshes"] >= 1 and session["routes_sent"] == 2, (node, session)


@pytest.mark.parametrize("router", ROUTERS)
def test_a_frozen_node_is_dropped_after_the_hold_time(make_lab: MakeLab, router: str) -> None:
    lab = make_lab(router=router)
    vip4, _ = setup(lab)
    nodes = lab.node_names()
    wait_hops(lab, vip4, nodes)
    victim = nodes[1]
    lab.crash(victim, "freeze")
    try:
        took = wait_hops(lab, vip4, [n for n in nodes if n != victim], timeout=HOLD + 10)
        print(f"{victim} frozen: {router} dropped its path {took:.2f}s later (hold {HOLD:g}s)")
    finally:
        lab.recover(victim, "freeze")
    wait_hops(lab, vip4, nodes, timeout=30)


def bfd_up(lab: NetLab) -> bool | None:
    """Every BFD session up, as the nodes (their status) and the router see them."""
    router = str(lab.plan.host("router").ipv4)
    for status in lab.statuses().values():
        bfd = ((status or {}).get("bgp") or {}).get("bfd") or {}
        if (bfd.get("peers") or {}).get(router, {}).get("status") != "up":
            return None
    return True if routers.bfd_up(lab) == set(node_ips(lab).values()) else None


@pytest.mark.parametrize("router", ROUTERS)
def test_bfd_drops_a_frozen_or_cut_off_node_long_before_the_hold_time(
    make_lab: MakeLab, router: str
) -> None:
    """BFD beside exabgp (the agent's BIRD), BFD on the router: a node that goes silent loses
    its paths after BFD's 300 ms, not the 3 s hold time. (The sub-second goal is measured by
    `raftlb lab bench failover --mode bgp --bfd`; this only tells BFD from the hold timer.)"""
    lab = make_lab(router=router, bfd=True)
    vip4, _ = setup(lab)
    nodes = lab.node_names()
    wait_hops(lab, vip4, nodes)
    wait_for(lambda: bfd_up(lab), 20.0, "every node's BFD session with the router up")
    router_ip = str(lab.plan.host("router").ipv4)

    def agents_say_up() -> bool | None:
        said = [((s or {}).get("bgp") or {}).get("bfd") or {} for s in lab.statuses().values()]
        ok = all(b.get("running") and b["peers"][router_ip]["status"] == "up" for b in said)
        return ok or None

    wait_for(agents_say_up, 20.0, "every agent's status showing its BFD session up")
    for victim, method in ((nodes[1], "freeze"), (nodes[2], "link")):
        lab.crash(victim, method)
        try:
            took = wait_hops(lab, vip4, [n for n in nodes if n != victim], timeout=HOLD + 10)
        finally:
            lab.recover(victim, method)
        print(f"{router} with BFD: {victim} ({method}) lost its path {took:.2f}s later")
        assert took < HOLD - 1.0, f"{took:.2f}s: the hold timer's doing, not BFD's"
        wait_hops(lab, vip4, nodes, timeout=30)
        wait_for(lambda: bfd_up(lab), 20.0, "BFD back up")


@pytest.mark.parametrize("router", ROUTERS)
def test_a_node_with_an_ipv4_and_an_ipv6_peer_announces_on_both(
    make_lab: MakeLab, router: str
) -> None:
    """Each node peers with the router over IPv4 and over IPv6 (bgp.local_address6): one
    exabgp config for both, where one shared source address made exabgp refuse it whole and
    the node announce nothing."""
    lab = make_lab(router=router, bgp6=True)
    vip4, vip6 = setup(lab)
    nodes = lab.node_names()
    wait_hops(lab, vip4, nodes)
    wait_hops(lab, vip6, nodes)
    host = lab.plan.host("router")
    both = {str(host.ipv4): "up", str(host.ipv6): "up"}

    def sessions_up() -> bool | None:
        statuses = lab.statuses()
        return all((s or {}).get("bgp", {}).get("peers") == both for s in statuses.values()) or None

    wait_for(sessions_up, 30.0, "both sessions of every node up")
    accepted = received(lab, router)
    # The IPv6 VIP came over each node's IPv6 session too (the IPv4 VIP does not: IPv4
    # routes are not negotiated on it).
    for address in node_ips(lab, "ipv6").values():
        assert accepted.get(address) == 1, accepted
    for address in node_ips(lab).values():
        assert accepted.get(address) == 2, accepted


@pytest.mark.parametrize("router", ROUTERS)
def test_an_ibgp_router_gets_the_pools_local_pref_and_ecmp_over_every_node(
    make_lab: MakeLab, router: str
) -> None:
    """LOCAL_PREF is an iBGP attribute: with the nodes in the router's AS, a pool's
    bgp.local_pref is on the router's paths, and every node's path is still installed."""
    lab = make_lab(router=router, ibgp=True)
    leader = lab.wait_leader()
    pool = {"addresses": [topology.BGP_VIPS4], "announce": "bgp", "bgp": {"local_pref": 250}}
    assert lab.api(leader, "PUT", "/v1/pools/routed", pool) is not None
    backends = [
        {"address": str(h.ipv4), "port": topology.BACKEND_HTTP_PORT}
        for h in lab.plan.of_kind("backend")
    ]
    body = {"ports": [{"port": 80, "backends": backends}]}
    vip = str(lab.api(leader, "PUT", "/v1/services/t/default/pref", body)["address"])
    wait_hops(lab, vip, lab.node_names())
    shown = communities(lab, vip)
    # BIRD writes `BGP.local_pref: 250`, FRR `localpref 250`.
    assert "BGP.local_pref: 250" in shown or "localpref 250" in shown, shown
    samples = probe(lab, vip, 1.0, "ibgp")
    assert not outages(samples), summary_line(samples)
