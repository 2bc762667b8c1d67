"""Waiting for a lab to be whole and balanced again after a fault or a run."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.lab import LabError
from appliance.lab.netlab import NetLab


@dataclass(frozen=True)
class Settled:
    leader: str
    owners: dict[str, str]  # VIP -> node
    terms: dict[str, int]  # node -> its Raft term


def settle(lab: NetLab, vips: Sequence[str], timeout: float = 60.0) -> Settled:
    """Wait until every node is up and connected, all agree on one leader and every VIP in
    `vips` is owned, no node holding more than its share (rounded up); with `vips_on_leader:
    avoid`, the leader holding none; and no node warming up (a node back from a restart takes
    its share only after its warmup: a fault begun before would see that move too)."""
    deadline = time.monotonic() + timeout
    nodes = lab.node_names()
    avoid = lab.vips_on_leader == "avoid" and len(nodes) > 1
    share = math.ceil(len(vips) / (len(nodes) - 1 if avoid else len(nodes)))
    while time.monotonic() < deadline:
        statuses = lab.statuses()
        leaders = {s["raft"]["leader"] if s else None for s in statuses.values()}
        whole = all(s and all(s["raft"]["connected"].values()) for s in statuses.values())
        if whole and len(leaders) == 1 and None not in leaders:
            leader = str(leaders.pop())
            found = lab.api(leader, "GET", "/v1/vips") or []
            owner = {v["address"]: v["node"] for v in found if v["address"] in vips}
            counts = [list(owner.values()).count(n) for n in nodes]
            owned = len(owner) == len(vips) and None not in owner.values()
            balanced = max(counts) <= share and not (avoid and leader in owner.values())
            if owned and balanced and warm(lab, leader):
                terms = {n: int(s["raft"]["term"]) for n, s in statuses.items() if s}
                return Settled(leader, {v: str(n) for v, n in owner.items()}, terms)
        time.sleep(0.1)
    raise LabError(f"the lab did not settle within {timeout:g}s; see {lab.dir}/logs")


def warm(lab: NetLab, leader: str) -> bool:
    """The leader's planner keeps no node warming (`warming` in /v1/nodes)."""
    found = lab.api(leader, "GET", "/v1/nodes") or []
    return bool(found) and all(n.get("warming") is False for n in found)
