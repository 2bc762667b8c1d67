"""`raftlb lab torture`: random faults on a namespace lab, watched from the client's wire.

A 3-node lab with three services per family (so each node owns one VIP of each), and in the
client a neighbour asker (appliance/lab/neighask.py) that asks for every VIP every 5 ms for the
whole campaign, each request numbered, so each reply names its question and the MAC that
answered. Each round waits until the cluster is whole (a leader, every VIP owned, balanced),
picks a fault kind and a victim (the leader, a VIP owner or a follower) with the seeded random
source, does the fault for 0.5-2 s (`--duration`), undoes it and waits again. The figures come from
appliance/lab/torture_report.py; a dual-owner moment makes the command exit non-zero.

Faults: kill9 (the agent's process group, restarted after), freeze (SIGSTOP of every process in
the node's namespace), linkdown (its switch port), isolate (every packet between it and the
other nodes dropped, the client still reaching it), asym (one direction between it and another
node dropped, appliance/lab/faults.py), cpuhog (two busy loops, one per core, beside it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.lab import LabError, topology
from appliance.lab.faults import one_way_loss
from appliance.lab.neighask import NeighbourAsker, Reply
from appliance.lab.netlab import NetLab, Progress
from appliance.lab.settle import settle
from appliance.lab.torture_report import KINDS, Fault, analyze

ASK_EVERY = 0.005  # each VIP
SETTLE_TIMEOUT = 90.0
LOG_TIME = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ WARNING raftlb\.heartbeats: lease ended"
)


def setup(lab: NetLab, ipv6: bool) -> list[str]:
    leader = lab.wait_leader()
    pool = {"addresses": [topology.L2_VIPS4, topology.L2_VIPS6], "default": True}
    if lab.api(leader, "PUT", "/v1/pools/torture", pool) is None:
        raise LabError("could not create the pool")
    vips = []
    for family in ("ipv4", "ipv6") if ipv6 else ("ipv4",):
        for i in range(len(lab.node_names())):
            body = {"ip_family": family, "ports": [{"port": topology.BACKEND_HTTP_PORT}]}
            answer = lab.api(leader, "PUT", f"/v1/services/torture/default/{family}-{i}", body)
            if answer is None:
                raise LabError(f"could not create service {family}-{i}")
            vips.append(str(answer["address"]))
    return vips


class Asker:
    """The client's asker, running for the whole campaign on the client's namespace thread."""

    def __init__(self, lab: NetLab, vips: Sequence[str]) -> None:
        self.thread = lab.in_ns("client")
        self.asker = self.thread.run(NeighbourAsker, lab.plan.host("client").interfaces[0].name)
        self.stop = threading.Event()
        targets = [ipaddress.ip_address(v) for v in vips]
        self.future = self.thread.submit(self._loop, targets)

    def _loop(self, targets: list[Any]) -> None:
        interval = ASK_EVERY / len(targets)
        i = 0
        while not self.stop.is_set():
            self.asker.send(targets[i % len(targets)])
            i += 1
            self.asker.collect(interval)
        self.asker.collect(0.05)

    def finish(self) -> list[Reply]:
        self.stop.set()
        try:
            self.future.result(timeout=60)
            return list(self.asker.replies)
        finally:
            with contextlib.suppress(Exception):
                self.thread.run(self.asker.close)
            self.thread.close()


class CpuHog:
    """Two busy loops (one per core) in a node's namespace, ended on exit."""

    def __init__(self, lab: NetLab, node: str) -> None:
        ns = lab.plan.host(node).netns
        self.procs = [
            subprocess.Popen(["ip", "netns", "exec", ns, "sh", "-c", "while :; do :; done"])
            for _ in range(2)
        ]

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def pick(
    rng: random.Random, kinds: Sequence[str], leader: str, owners: dict[str, str], nodes: list[str]
) -> tuple[str, str, str, str | None]:
    """(kind, victim, role, peer) for one round."""
    kind = rng.choice(list(kinds))
    role = rng.choice(["leader", "owner", "follower"])
    followers = [n for n in nodes if n != leader]
    if role == "leader":
        victim = leader
    elif role == "owner":
        victim = rng.choice(sorted(set(owners.values())))
    else:
        victim = rng.choice(followers)
    peer = rng.choice([n for n in nodes if n != victim]) if kind == "asym" else None
    return kind, victim, role, peer


def do_fault(
    lab: NetLab, rng: random.Random, kind: str, victim: str, peer: str | None, seconds: float
) -> str:
    """Do `kind` to `victim` for `seconds`, undo it; what was done, in words."""
    nodes = lab.node_names()
    if kind in ("kill9", "freeze", "linkdown"):
        method = {"kill9": "kill", "freeze": "freeze", "linkdown": "link"}[kind]
        lab.crash(victim, method)
        try:
            time.sleep(seconds)
        finally:
            lab.recover(victim, method)
        return f"{kind} {victim}"
    if kind == "isolate":
        others = [n for n in nodes if n != victim]
        try:
            for other in others:
                one_way_loss(lab, victim, other)
                one_way_loss(lab, other, victim)
            time.sleep(seconds)
        finally:
            for node in nodes:
                one_way_loss(lab, node, victim, on=False)
        return f"{victim} cut off from {', '.join(others)}"
    if kind == "asym":
        assert peer is not None
        at, source = (victim, peer) if rng.random() < 0.5 else (peer, victim)
        try:
            one_way_loss(lab, at, source)
            time.sleep(seconds)
        finally:
            one_way_loss(lab, at, source, on=False)
        return f"{at} stops hearing {source}"
    if kind == "cpuhog":
        hog = CpuHog(lab, victim)
        try:
            time.sleep(seconds)
        finally:
            hog.stop()
        return f"2 busy loops beside {victim}"
    raise LabError(f"fault kind must be one of {', '.join(KINDS)}, got {kind!r}")


def lease_lapses(lab: NetLab) -> dict[str, list[float]]:
    """node -> wall times it logged that its lease ended."""
    out: dict[str, list[float]] = {}
    for node in lab.node_names():
        path = lab.log_path(f"agent-{node}")
        times = out.setdefault(node, [])
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            found = LOG_TIME.match(line)
            if found:
                stamp = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
                times.append(stamp.timestamp())
    return out


def torture(
    base: Path,
    rounds: int,
    kinds: Sequence[str],
    seed: int,
    ipv6: bool,
    progress: Progress,
    duration: tuple[float, float] = (0.5, 2.0),
    vips_on_leader: str = "avoid",
) -> dict[str, Any]:
    """The campaign; each fault lasts a random time within `duration` (seconds)."""
    rng = random.Random(seed)
    lab = NetLab.up(
        nodes=3, backends=1, base=base, progress=lambda _: None, vips_on_leader=vips_on_leader
    )
    faults: list[Fault] = []
    try:
        vips = setup(lab, ipv6)
        settled = settle(lab, vips, SETTLE_TIMEOUT)
        leader, owners, terms = settled.leader, settled.owners, settled.terms
        asker = Asker(lab, vips)
        try:
            for n in range(1, rounds + 1):
                kind, victim, role, peer = pick(rng, kinds, leader, owners, lab.node_names())
                seconds = round(rng.uniform(*duration), 2)
                start, wall_start = time.monotonic(), time.time()
                detail = do_fault(lab, rng, kind, victim, peer, seconds)
                end = time.monotonic()
                after = settle(lab, vips, SETTLE_TIMEOUT)
                new_leader, new_owners, new_terms = after.leader, after.owners, after.terms
                faults.append(
                    Fault(
                        round=n,
                        kind=kind,
                        victim=victim,
                        role=role,
                        start=start,
                        end=end,
                        settled=time.monotonic(),
                        wall_start=wall_start,
                        wall_settled=time.time(),
                        owners=owners,
                        terms_before=terms,
                        terms_after=new_terms,
                        leader_before=leader,
                        peer=peer,
                        detail=detail,
                    )
                )
                progress(f"[{n}/{rounds}] {detail} for {seconds:g}s ({role})")
                leader, owners, terms = new_leader, new_owners, new_terms
        finally:
            replies = asker.finish()
        lapses = lease_lapses(lab)
        result = analyze(replies, faults, lapses)
        total = result["total"]
        if (
            total["dual_owner_moments"]
            or total["untouched_lease_lapses"]
            or total["unexpected_elections"]
        ):
            # What to look at: the agents' logs outlive the lab.
            kept = base / f"torture-{lab.run_id}-logs"
            shutil.copytree(lab.dir / "logs", kept, dirs_exist_ok=True)
            result["logs"] = str(kept)
            progress(f"something to look at: the agents' logs are kept in {kept}")
    finally:
        lab.down(progress=lambda _: None)
    result["seed"] = seed
    result["ipv6"] = ipv6
    result["vips_on_leader"] = vips_on_leader
    return result
