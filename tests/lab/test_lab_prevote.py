"""PreVote in the lab: one-way loss between the leader and a follower deposes nobody.

Without PreVote the follower that stops hearing the leader campaigns with a higher term, the
untouched follower adopts it and drops its leader, and the term climbs while leases lapse on
nodes the fault never touched (FACTS.md: term +4-11 in 11 of 15 rounds). With it, the untouched
follower still hears the leader and refuses the pre-vote: no election anywhere.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from appliance.lab.faults import one_way_loss
from appliance.lab.settle import settle
from raft.timing import PROFILES
from tests.lab.labkit import MakeLab
from tests.lab.test_lab_ownership import Watch, macs, setup_vips

pytestmark = pytest.mark.timeout(240)
LOSS = 4.0  # seconds of one-way loss: many election timeouts (fast: 0.15-0.3 s) and leases
AFTER = 2.0  # the loss healed: the cut-off node returns


def terms(lab: Any) -> dict[str, tuple[int, str | None]]:
    return {n: (s["raft"]["term"], s["raft"]["leader"]) for n, s in lab.statuses().items() if s}


def max_gap(at: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(at)), default=0.0)


@pytest.mark.parametrize("direction", ["leader-unheard", "follower-unheard"])
def test_one_way_loss_between_leader_and_follower_causes_no_election(
    make_lab: MakeLab, direction: str
) -> None:
    lab = make_lab()
    vips = setup_vips(lab)
    nodes = lab.node_names()
    settled = settle(lab, vips)  # no VIP on its way (a new leader's, a warm node's share)
    leader, held = settled.leader, settled.owners
    followers = [n for n in nodes if n != leader]
    # The victim: a follower holding as few VIPs as possible, so untouched nodes hold some.
    victim = min(followers, key=lambda n: sum(1 for o in held.values() if o == n))
    watched = tuple(v for v in vips if held[v] != victim)
    assert watched, held
    before = terms(lab)
    assert len({t for t, _ in before.values()}) == 1, before
    # leader-unheard: the victim stops hearing the leader; follower-unheard: the reverse.
    at, source = (victim, leader) if direction == "leader-unheard" else (leader, victim)
    watch = Watch(lab, vips, seconds=1.0 + LOSS + AFTER)
    time.sleep(1.0)
    cut = time.monotonic()
    one_way_loss(lab, at, source)
    try:
        time.sleep(LOSS)
    finally:
        one_way_loss(lab, at, source, on=False)
    time.sleep(AFTER)
    replies = watch.finish()
    after = terms(lab)
    names = macs(lab)
    print(f"{direction}: leader {leader}, victim {victim}; terms {before} -> {after}")
    untouched = [n for n in nodes if n != victim]
    for n in untouched:
        assert after[n] == before[n], f"{n}: term/leader {before[n]} -> {after[n]}"
    for vip in watched:
        mine = [r for r in replies if r.vip == vip and r.at >= cut]
        by = {names.get(r.mac, r.mac) for r in mine}
        gap = max_gap(sorted(r.at for r in mine))
        print(f"  {vip} on {held[vip]}: answered by {sorted(by)}, longest gap {gap * 1000:.0f} ms")
        assert by == {held[vip]}, f"{vip} moved or was answered by another node: {sorted(by)}"
        assert gap < 0.3, f"{vip} unanswered for {gap:.2f}s on an untouched node"


def lease_ends(lab: Any, node: str) -> int:
    text = lab.log_path(f"agent-{node}").read_text(errors="replace")
    return text.count("raftlb.heartbeats: lease ended")


def test_a_returning_isolated_leader_deposes_nobody_and_costs_no_lease(make_lab: MakeLab) -> None:
    """The leader is cut off from both followers (the client still reaches it) for 3 s: they
    elect one of themselves (one term up) and take its VIPs; it stops answering within its
    lease; back, it follows. Nothing else: no second election, no lease ends on the others, and
    their VIPs answered all along."""
    lab = make_lab()
    vips = setup_vips(lab)
    nodes = lab.node_names()
    settled = settle(lab, vips)
    old, held = settled.leader, settled.owners
    others = [n for n in nodes if n != old]
    watched = tuple(v for v in vips if held[v] != old)
    before = terms(lab)
    ends = {n: lease_ends(lab, n) for n in others}
    watch = Watch(lab, vips, seconds=1.0 + 3.0 + 4.0)
    time.sleep(1.0)
    cut = time.monotonic()
    try:
        for other in others:
            one_way_loss(lab, old, other)
            one_way_loss(lab, other, old)
        time.sleep(3.0)
    finally:
        for node in nodes:
            one_way_loss(lab, node, old, on=False)
    time.sleep(4.0)
    replies = watch.finish()
    after = terms(lab)
    names = macs(lab)
    print(f"isolated leader {old}: terms {before} -> {after}")
    start = before[old][0]
    assert {t for t, _ in after.values()} == {start + 1}, after  # one election, not a storm
    assert len({leader for _, leader in after.values()}) == 1
    assert {n: lease_ends(lab, n) for n in others} == ends, "a lease ended on an untouched node"
    window = PROFILES["fast"].promise_window  # how long its last promises can last
    late = [r for r in replies if names.get(r.mac) == old and r.at > cut + window + 0.1]
    assert not late, f"the isolated leader answered after its lease: {late[:3]}"
    for vip in watched:
        mine = sorted(r.at for r in replies if r.vip == vip and r.at >= cut)
        by = {names.get(r.mac, r.mac) for r in replies if r.vip == vip and r.at >= cut}
        gap = max_gap(mine)
        print(f"  {vip} on {held[vip]}: answered by {sorted(by)}, longest gap {gap * 1000:.0f} ms")
        assert gap < 0.3, f"{vip} unanswered for {gap:.2f}s on an untouched node"
