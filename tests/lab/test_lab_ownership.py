"""VIP ownership end to end: real agents (announce: l2) in a namespace lab, seen from the client.

Every test builds its own lab (3 nodes), gives it a layer-2 pool and two services (one IPv4 VIP,
one IPv6 VIP) and watches the client's wire with `NeighbourAsker`: broadcast ARP requests and
multicast NS reach every node, so any node that believes it owns a VIP answers, and a request
answered by two MACs is two owners at that moment (resolution: the ask interval, 5 ms here).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
import json
import time

import pytest
import requests

from appliance.lab import topology
from appliance.lab.neighask import NeighbourAsker, Reply, double_answers, reply_runs
from appliance.lab.netlab import NetLab
from appliance.lab.settle import settle
from raft.timing import PROFILES
from tests.lab.labkit import MakeLab, wait_for

pytestmark = pytest.mark.timeout(180)
# The longest a node can hold on (quorum-promise leases, the default): its peers' promise window.
LEASE = PROFILES["fast"].promise_window
SETTLE = 20.0
ASK_INTERVAL = 0.005


def setup_vips(lab: NetLab) -> tuple[str, str]:
    """A pool and two services through the leader's API; their (IPv4, IPv6) VIPs."""
    leader = lab.wait_leader()
    pool = {"addresses": [topology.L2_VIPS4, topology.L2_VIPS6], "default": True}
    assert lab.api(leader, "PUT", "/v1/pools/lan", pool) is not None
    vips = []
    for family in ("ipv4", "ipv6"):
        body = {"ip_family": family, "ports": [{"port": 80}]}
        answer = lab.api(leader, "PUT", f"/v1/services/t/default/web-{family}", body)
        assert answer is not None, f"service {family} not created"
        vips.append(answer["address"])
    return vips[0], vips[1]


def owners(lab: NetLab, nodes: list[str]) -> dict[str, str | None] | None:
    """VIP -> owning node as the first answering node of `nodes` has it committed."""
    for node in nodes:
        answer = lab.api(node, "GET", "/v1/vips", timeout=1.0)
        if answer is not None:
            return {v["address"]: v["node"] for v in answer}
    return None


def wait_owner(
    lab: NetLab, vip: str, ask: list[str], not_on: tuple[str, ...] = (), timeout: float = SETTLE
) -> str:
    def owner() -> str | None:
        found = (owners(lab, ask) or {}).get(vip)
        return found if found is not None and found not in not_on else None

    return wait_for(owner, timeout, f"an owner of {vip} other than {not_on or 'none'}")


@dataclasses.dataclass
class Scene:
    """A lab with both VIPs owned: the owners by VIP, and node names by MAC."""

    lab: NetLab
    vips: tuple[str, str]
    nodes: list[str]
    names: dict[str, str]
    owner: dict[str, str]


def scene(make_lab: MakeLab) -> Scene:
    """A settled lab: with `vips_on_leader: avoid` the leader has handed its VIPs over, which
    it does once another node is past its warmup (a VIP still on its way would move during
    the test and look like a flap)."""
    lab = make_lab()
    vips = setup_vips(lab)
    nodes = lab.node_names()
    owner = settle(lab, vips).owners
    return Scene(lab, vips, nodes, macs(lab), owner)


def macs(lab: NetLab) -> dict[str, str]:
    return {h.interfaces[0].mac: h.name for h in lab.plan.of_kind("node")}


class Watch:
    """The client's asker, probing the VIPs on the client's namespace thread."""

    def __init__(
        self, lab: NetLab, vips: tuple[str, str], seconds: float, host: str = "client"
    ) -> None:
        # With a router the client is behind it: the router is the one on the nodes' LAN.
        self.thread = lab.in_ns(host)
        self.asker = self.thread.run(NeighbourAsker, lab.plan.host(host).interfaces[0].name)
        targets = [ipaddress.ip_address(v) for v in vips]
        self.future: concurrent.futures.Future[None] = self.thread.submit(
            self.asker.probe, targets, seconds, ASK_INTERVAL
        )

    def finish(self) -> list[Reply]:
        try:
            self.future.result(timeout=120)
            return list(self.asker.replies)
        finally:
            self.thread.run(self.asker.close)
            self.thread.close()


def describe(replies: list[Reply], vip: str, names: dict[str, str], since: float) -> str:
    runs = reply_runs(replies, vip)
    return json.dumps(
        [
            (names.get(r.mac, r.mac), round(r.first - since, 3), round(r.last - since, 3), r.count)
            for r in runs
        ]
    )


def assert_single_owner(replies: list[Reply], names: dict[str, str]) -> None:
    both = double_answers(replies)
    assert not both, {
        ident: sorted(names.get(m, m) for m in found) for ident, found in list(both.items())[:5]
    }


def neigh_mac(lab: NetLab, vip: str) -> str | None:
    result = lab.exec(
        "client", ["ip", "-j", "neigh", "show", vip, "dev", "eth0"], capture_output=True, text=True
    )
    entries = json.loads(result.stdout or "[]")
    return entries[0].get("lladdr") if entries else None


def metrics_text(lab: NetLab, node: str) -> str:
    def get() -> str:
        headers = {"Authorization": f"Bearer {lab.token()}"}
        return requests.get(f"{lab.api_url(node)}/metrics", headers=headers, timeout=2).text

    thread = lab.in_ns("client")
    try:
        return thread.run(get)
    finally:
        thread.close()


def wait_entry(lab: NetLab, vip: str, mac: str, what: str) -> None:
    wait_for(lambda: neigh_mac(lab, vip) == mac or None, 5.0, what)


# --- takeover ----------------------------------------------------------------------------------


def test_takeover_moves_the_clients_neighbour_entry_to_the_new_owner(make_lab: MakeLab) -> None:
    lab = make_lab()
    vip4, vip6 = setup_vips(lab)
    nodes = lab.node_names()
    names = macs(lab)
    by_name = {n: m for m, n in names.items()}
    owner4 = wait_owner(lab, vip4, nodes)
    # The client resolves both VIPs once, as any client would before talking to them.
    for vip in (vip4, vip6):
        lab.exec("client", ["ping", "-c", "1", "-W", "0.3", vip], capture_output=True)
    for vip in (vip4, vip6):
        owner = wait_owner(lab, vip, nodes)
        wait_entry(lab, vip, by_name[owner], f"the client's entry for {vip} ({owner})")

    victim = owner4
    killed = time.monotonic()
    lab.crash(victim, "kill")
    survivors = [n for n in nodes if n != victim]
    for vip in (vip4, vip6):
        new = wait_owner(lab, vip, survivors, not_on=(victim,))
        # Nobody on the client asks again: only the new owner's GARP / unsolicited NA (override)
        # can move the entry.
        wait_entry(lab, vip, by_name[new], f"the client's entry for {vip} to carry {new}'s MAC")
    print(f"kill -9 of {victim}: client entries moved {time.monotonic() - killed:.2f}s later")

    # The failover is visible: in `raftlb vips` (reason, from where, how long the owner was
    # silent), in the new owner's log and in its /metrics.
    new = wait_owner(lab, vip4, survivors, not_on=(victim,))
    entry = next(v for v in lab.api(new, "GET", "/v1/vips") if v["address"] == vip4)
    assert (entry["reason"], entry["previous"]) == ("dead", victim), entry
    # Its peers gave up on it once their promises ended, a promise window after its last word.
    assert 0.8 * LEASE < entry["dead_for"] < 5.0, entry
    assert "failover: took " + vip4 in lab.log_path(f"agent-{new}").read_text()
    metrics = metrics_text(lab, new)
    assert 'raftlb_vip_takeovers_total{reason="dead"} 1.0' in metrics
    assert "raftlb_failover_seconds_count 1.0" in metrics


# --- no two owners, ever ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "method"),
    [
        ("kill -9 of the owner", "kill"),
        ("frozen owner thawed after its VIP moved", "freeze"),
        ("partition isolating the owner", "link"),
        ("partition isolating the leader", "link"),
    ],
)
def test_never_two_owners(make_lab: MakeLab, case: str, method: str) -> None:
    sc = scene(make_lab)
    lab, vips, nodes, names = sc.lab, sc.vips, sc.nodes, sc.names
    victim = lab.wait_leader() if "leader" in case else sc.owner[vips[0]]
    before = owners(lab, nodes) or {}
    moving = sorted(v for v, n in before.items() if n == victim)
    # Long enough to see a thawed or healed victim take its share back after its warmup.
    watch = Watch(lab, vips, seconds=PROFILES["fast"].warmup + 4.0)
    time.sleep(1.0)
    crashed = time.monotonic()
    lab.crash(victim, method)
    survivors = [n for n in nodes if n != victim]
    for vip in moving:
        wait_owner(lab, vip, survivors, not_on=(victim,))
    moved = time.monotonic()
    if method != "kill":
        time.sleep(0.5)
        lab.recover(victim, method)  # thaw / heal: the old owner is back, with stale beliefs
    replies = watch.finish()

    report = {vip: describe(replies, vip, names, crashed) for vip in vips}
    print(f"{case}: victim {victim}, VIPs moved {moved - crashed:.2f}s after; runs {report}")
    assert_single_owner(replies, names)
    # Back and past its warmup, the victim may take its share again (one planned move, with
    # vips_on_leader: avoid two VIPs are shared by the two followers): later runs of its are
    # that, not answers under a lapsed lease.
    back = crashed + PROFILES["fast"].warmup
    late = [
        r
        for r in replies
        if names.get(r.mac) == victim and r.vip in moving and crashed + LEASE + 0.1 < r.at < back
    ]
    assert not late, f"{victim} answered after its lease lapsed: {late[:3]}"
    final = owners(lab, nodes) or {}
    for vip in vips:
        runs = reply_runs(replies, vip)
        assert runs, f"nobody answered for {vip}"
        assert names.get(runs[-1].mac) == final[vip], report[vip]
        # One owner change per VIP, and one more only to give the victim its share back: no
        # flap back and forth.
        returned = len(runs) == 3 and names.get(runs[2].mac) == victim and runs[2].first > back
        assert len(runs) <= 2 or returned, report[vip]


def test_quorum_loss_silences_the_survivor_within_the_lease(make_lab: MakeLab) -> None:
    sc = scene(make_lab)
    lab, vips, nodes, names = sc.lab, sc.vips, sc.nodes, sc.names
    owner = sc.owner[vips[0]]
    watch = Watch(lab, vips, seconds=4.0)
    time.sleep(1.0)
    killed = time.monotonic()
    for node in nodes:
        if node != owner:
            lab.crash(node, "kill")
    replies = watch.finish()
    last = max((r.at for r in replies if names.get(r.mac) == owner), default=None)
    assert last is not None, "the owner never answered"
    print(f"quorum loss: {owner} answered until {last - killed:.3f}s after the kills")
    assert last - killed < LEASE + 0.1, f"{owner} answered {last - killed:.3f}s after quorum loss"
    assert last > killed, "the owner stopped answering before losing its quorum"


def test_a_returning_node_does_not_make_vips_flap(make_lab: MakeLab) -> None:
    """A VIP owner is killed and comes back: its VIP moved once to the other follower (the
    leader holds none), and once the returning node is past its warmup it takes its share
    back in one planned move; no VIP changes hands more than that, none goes back and forth."""
    sc = scene(make_lab)
    lab, vips, nodes, names = sc.lab, sc.vips, sc.nodes, sc.names
    victim = sc.owner[vips[0]]
    lab.crash(victim, "kill")
    survivors = [n for n in nodes if n != victim]
    wait_owner(lab, vips[0], survivors, not_on=(victim,))
    before = owners(lab, survivors) or {}
    watch = Watch(lab, vips, seconds=PROFILES["fast"].warmup + 6.0)
    time.sleep(0.5)
    lab.recover(victim, "kill")

    def rejoined() -> bool | None:
        answer = lab.api(victim, "GET", "/v1/status", timeout=1.0)
        return (answer is not None and all(answer["raft"]["connected"].values())) or None

    wait_for(rejoined, SETTLE, f"{victim} to rejoin")
    replies = watch.finish()
    after = owners(lab, nodes) or {}
    assert_single_owner(replies, names)
    moved = [vip for vip in vips if after.get(vip) != before.get(vip)]
    assert all(after[vip] == victim for vip in moved), (before, after)
    for vip in vips:
        runs = reply_runs(replies, vip)
        assert len(runs) == (2 if vip in moved else 1), describe(replies, vip, names, 0.0)
