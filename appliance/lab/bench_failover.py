"""`raftlb lab bench failover`: the outage a client sees when a VIP's owner fails, per crash kind.

One lab (3 nodes, 2 backends) with three HTTP services. Each run crashes the Raft leader or a
follower owning a VIP (with `vips_on_leader: avoid`, the default, the leader owns none: then a
follower's VIP is probed while the leader dies), starts the HTTP prober (a request
every 10 ms) and the neighbour asker (an ARP request every 5 ms) in the client, crashes the owner
(kill -9 of its agent's process group, its link cut, or its processes frozen), and reports the
client-seen outage (first failed request to first answered one) and whether two MACs ever
answered one ARP request for the VIP. Then it undoes the crash and waits until the cluster is
whole and balanced again. A planned drain of the owner is measured the same way.
"""

from __future__ import annotations

import ipaddress
import json
import statistics
import time
from pathlib import Path
from typing import Any

from appliance.lab import LabError, topology
from appliance.lab.bench import run_prober
from appliance.lab.keepalived import KA_VIP, TIMERS, Keepalived, ensure_installed
from appliance.lab.neighask import NeighbourAsker, double_answers, reply_runs
from appliance.lab.netlab import NetLab, Progress
from appliance.lab.outage import outages, percentile
from appliance.lab.prober import read_samples
from appliance.lab.settle import settle

METHODS = ("kill", "link", "freeze")
ROLES = ("leader", "owner")  # the Raft leader; a follower that owns the probed VIP
SERVICES = 3
PROBE_SECONDS = 4.0
CRASH_AT = 1.0


def setup_services(lab: NetLab) -> list[str]:
    leader = lab.wait_leader()
    pool = {"addresses": [topology.L2_VIPS4, topology.L2_VIPS6], "default": True}
    if lab.api(leader, "PUT", "/v1/pools/bench", pool) is None:
        raise LabError("could not create the pool")
    backends = [
        {"address": str(h.ipv4), "port": topology.BACKEND_HTTP_PORT}
        for h in lab.plan.of_kind("backend")
    ]
    vips = []
    for i in range(SERVICES):
        body = {"ports": [{"port": topology.BACKEND_HTTP_PORT, "backends": backends}]}
        answer = lab.api(leader, "PUT", f"/v1/services/bench/default/web{i}", body)
        if answer is None:
            raise LabError(f"could not create service web{i}")
        vips.append(str(answer["address"]))
    return vips


def measure(lab: NetLab, vip: str, old: str, key: str, act: Any) -> dict[str, Any]:
    """Probe `vip` while `act()` runs at CRASH_AT; the outage and the two-MAC verdict.

    `takeover_s`: from the act to the first ARP answer from another MAC than `old`'s. It is
    reported beside the HTTP outage because a node whose agent died or froze still forwards
    with the rules it had (the kernel data plane outlives the agent) until clients move.
    """
    thread = lab.in_ns("client")
    try:
        asker = thread.run(NeighbourAsker, "eth0")
        asking = thread.submit(asker.probe, [ipaddress.ip_address(vip)], PROBE_SECONDS + 0.5, 0.005)
        acted: list[float] = []

        def during() -> None:
            time.sleep(CRASH_AT)
            acted.append(time.monotonic())
            act()

        out = run_prober(lab, key, vip, "http", PROBE_SECONDS, during)
        asking.result(timeout=60)
        replies = list(asker.replies)
        thread.run(asker.close)
    finally:
        thread.close()
    samples = read_samples(out)
    out.unlink(missing_ok=True)
    windows = [o for o in outages(samples) if o.end >= acted[0] - 0.05]
    old_mac = lab.plan.host(old).interfaces[0].mac
    moved = [r.at for r in replies if r.mac != old_mac and r.at >= acted[0]]
    return {
        "takeover_s": round(min(moved) - acted[0], 4) if moved else None,
        "outage_s": round(max((o.duration for o in windows), default=0.0), 4),
        "windows": len(windows),
        "open": any(o.open for o in windows),
        "two_macs": bool(double_answers(replies)),
        "macs": len(reply_runs(replies, vip)),
    }


def crash_run(lab: NetLab, vips: list[str], method: str, role: str, n: int) -> dict[str, Any]:
    """Crash the leader or a follower owning a VIP, and probe a VIP of the victim's; a leader
    that holds none (`vips_on_leader: avoid`) is crashed while a follower's VIP is probed (in
    turn, so both the next leader's and the other's are seen): its death must cost them
    nothing but the new leader's handing its VIPs over."""
    settled = settle(lab, vips)
    leader, owner = settled.leader, settled.owners
    victim = leader if role == "leader" else None
    mine = [v for v in vips if (owner[v] == leader) == (role == "leader")]
    others = [v for v in vips if owner[v] != leader]
    vip = mine[n % len(mine)] if mine else others[n % len(others)]
    victim = victim or owner[vip]
    key = f"bench-{method}-{role}-{n}"
    result = measure(lab, vip, owner[vip], key, lambda: lab.crash(victim, method))
    lab.recover(victim, method)
    return {"victim": victim, "owner": owner[vip], **result}


def drain_run(lab: NetLab, vips: list[str], n: int) -> dict[str, Any]:
    settled = settle(lab, vips)
    leader, owner = settled.leader, settled.owners
    vip = vips[n % len(vips)]
    victim = owner[vip]

    def drain() -> None:
        if lab.api(leader, "POST", f"/v1/nodes/{victim}/drain") is None:
            raise LabError(f"drain of {victim} failed")

    result = measure(lab, vip, victim, f"bench-drain-{n}", drain)
    lab.api(leader, "POST", f"/v1/nodes/{victim}/undrain")
    return {"victim": victim, **result}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    values = [r["outage_s"] for r in runs]
    takeovers = [r["takeover_s"] for r in runs if r["takeover_s"] is not None]
    return {
        "runs": len(runs),
        "takeover_p50_ms": round(1000 * percentile(takeovers, 50), 1) if takeovers else None,
        "takeover_max_ms": round(1000 * max(takeovers), 1) if takeovers else None,
        "no_takeover_runs": len(runs) - len(takeovers),
        "p50_ms": round(1000 * percentile(values, 50), 1),
        "p90_ms": round(1000 * percentile(values, 90), 1),
        "max_ms": round(1000 * max(values), 1),
        "two_mac_runs": sum(1 for r in runs if r["two_macs"]),
        "open_runs": sum(1 for r in runs if r["open"]),
    }


def keepalived_run(lab: NetLab, ka: Keepalived, method: str, n: int) -> dict[str, Any]:
    master = ka.steady()
    act = (lambda: ka.kill(master)) if method == "kill" else (lambda: lab.crash(master, method))
    result = measure(lab, KA_VIP, master, f"bench-ka-{ka.timers}-{method}-{n}", act)
    if method == "kill":
        ka.forget(master)  # the orphaned VIP would answer for ever
        ka.start(master)
    else:
        lab.recover(master, method)
    return {"victim": master, **result}


def compare_keepalived(
    lab: NetLab, runs: int, progress: Progress, methods: tuple[str, ...] = METHODS
) -> dict[str, Any]:
    ensure_installed(progress)
    cases: dict[str, list[dict[str, Any]]] = {}
    for timers in TIMERS:
        ka = Keepalived(lab, timers)
        try:
            for n in range(runs):
                for method in methods:
                    run = keepalived_run(lab, ka, method, n)
                    case = f"keepalived {timers}: {method}"
                    cases.setdefault(case, []).append(run)
                    progress(
                        f"{case}: outage {1000 * run['outage_s']:.0f} ms, "
                        f"two MACs: {run['two_macs']}"
                    )
        finally:
            ka.stop()
    return cases


def bench_failover(
    base: Path,
    runs: int,
    progress: Progress,
    compare: bool = False,
    vips_on_leader: str = "avoid",
    kinds: tuple[str, ...] = (*METHODS, "drain"),
) -> dict[str, Any]:
    """Every crash kind of `kinds` (kill, link, freeze) done to the leader and to an owner,
    and a drain if `kinds` has it, `runs` times each."""
    methods = tuple(m for m in METHODS if m in kinds)
    lab = NetLab.up(
        nodes=3, backends=2, base=base, progress=lambda _: None, vips_on_leader=vips_on_leader
    )
    cases: dict[str, list[dict[str, Any]]] = {}
    try:
        vips = setup_services(lab)
        total = runs * (len(methods) * len(ROLES) + ("drain" in kinds))
        done = 0
        for n in range(runs):
            for method in methods:
                for role in ROLES:
                    case = f"{method} ({role})"
                    run = crash_run(lab, vips, method, role, n)
                    cases.setdefault(case, []).append(run)
                    done += 1
                    progress(f"[{done}/{total}] {case}: {1000 * run['outage_s']:.0f} ms")
            if "drain" not in kinds:
                continue
            run = drain_run(lab, vips, n)
            cases.setdefault("planned drain", []).append(run)
            done += 1
            progress(f"[{done}/{total}] planned drain: {1000 * run['outage_s']:.0f} ms")
        if compare:
            cases.update(compare_keepalived(lab, runs, progress, methods))
    finally:
        lab.down(progress=lambda _: None)
    return {
        "vips_on_leader": vips_on_leader,
        "summary": {case: summarize(found) for case, found in cases.items()},
        "runs": cases,
    }


def render_failover(result: dict[str, Any]) -> str:
    leader = (
        "the leader holds no VIP (vips_on_leader: avoid): the probed VIP is a follower's"
        if result.get("vips_on_leader", "avoid") == "avoid"
        else "the leader owns the probed VIP (vips_on_leader: share)"
    )
    lines = [
        "client-seen outage (HTTP request every 10 ms through the VIP) when a node fails,",
        "and ARP takeover (act to the first answer from another MAC than the owner's);",
        f"(leader): {leader}; (owner): a follower owning the probed VIP",
        f"  {'case':<30} {'runs':>4} {'outage p50':>10} {'p90':>7} {'max':>7}  "
        f"{'takeover p50':>12} {'max':>7}  two MACs",
    ]
    for case, s in result["summary"].items():
        take = (
            f"{s['takeover_p50_ms']:>12.0f} {s['takeover_max_ms']:>7.0f}"
            if s["takeover_p50_ms"] is not None
            else f"{'none':>12} {'':>7}"
        )
        lines.append(
            f"  {case:<30} {s['runs']:>4} {s['p50_ms']:>10.0f} {s['p90_ms']:>7.0f} "
            f"{s['max_ms']:>7.0f}  {take}  {s['two_mac_runs']} of {s['runs']}"
        )
    lines.append("  (ms; kill and freeze stop the agent, not the kernel: the old owner forwards")
    lines.append("   with its last rules until the new owner's GARP moves the client)")
    lines += _ratios(result["summary"])
    return "\n".join(lines)


def _ratios(summary: dict[str, Any]) -> list[str]:
    """keepalived next to raftlb per crash kind: p50 ARP takeover and p50 outage ratios."""
    if not any(case.startswith("keepalived") for case in summary):
        return []
    lines = ["keepalived / raftlb, p50 (higher: raftlb is faster):"]
    for method in METHODS:
        if f"{method} ({ROLES[0]})" not in summary:
            continue
        ours = [summary[f"{method} ({role})"] for role in ROLES]
        take = statistics.median(s["takeover_p50_ms"] or 0.0 for s in ours)
        out = statistics.median(s["p50_ms"] for s in ours)
        for timers in TIMERS:
            theirs = summary.get(f"keepalived {timers}: {method}")
            if theirs is None:
                continue
            take_ratio = (
                f"{theirs['takeover_p50_ms'] / take:.2f}x"
                if take and theirs["takeover_p50_ms"]
                else "-"
            )
            out_ratio = f"{theirs['p50_ms'] / out:.2f}x" if out else "-"
            lines.append(
                f"  {method:<7} vs {timers:<12} takeover {take_ratio:>7}  outage {out_ratio:>7}"
                f"  (two MACs in {theirs['two_mac_runs']} of {theirs['runs']} keepalived runs)"
            )
    return lines


def main_failover(
    base: Path,
    runs: int,
    as_json: bool,
    progress: Progress,
    compare: bool = False,
    vips_on_leader: str = "avoid",
    kinds: tuple[str, ...] = (*METHODS, "drain"),
) -> str:
    result = bench_failover(base, runs, progress, compare, vips_on_leader, kinds)
    return json.dumps(result, indent=2) if as_json else render_failover(result)
