"""`raftlb lab bench failover --mode bgp`: what a client behind the router sees when one of the
nodes announcing a VIP (ECMP) drains, loses its agent (kill -9) or goes silent (link cut,
freeze), behind each router (BIRD and FRR, one lab each, one after the other).

The client's requests are hashed over all announcing nodes, so only the flows that land on the
failed node suffer, and only until the router drops that node's route: the figure is the
disruption window (first to last failed request) and the failed requests. Also the time from the
act (the committed drain, the kill, the cut) to the route leaving the router's kernel table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from appliance.lab import LabError, topology
from appliance.lab.bench import run_prober
from appliance.lab.netlab import NetLab, Progress
from appliance.lab.outage import percentile
from appliance.lab.prober import read_samples
from appliance.lab.routers import ROUTERS, bfd_up

CASES = ("drain", "kill", "link", "freeze")
PROBE_SECONDS = 6.0  # the silent node needs the hold time (3 s) and some


def setup(lab: NetLab) -> str:
    leader = lab.wait_leader()
    pool = {"addresses": [topology.BGP_VIPS4], "announce": "bgp"}
    if lab.api(leader, "PUT", "/v1/pools/routed", pool) is None:
        raise LabError("could not create the bgp pool")
    backends = [
        {"address": str(h.ipv4), "port": topology.BACKEND_HTTP_PORT}
        for h in lab.plan.of_kind("backend")
    ]
    body = {"ports": [{"port": topology.BACKEND_HTTP_PORT, "backends": backends}]}
    answer = lab.api(leader, "PUT", "/v1/services/bench/default/routed", body)
    if answer is None:
        raise LabError("could not create the service")
    return str(answer["address"])


def wait_hops(lab: NetLab, vip: str, nodes: list[str], timeout: float = 60.0) -> None:
    want = {str(lab.plan.host(n).ipv4) for n in nodes}
    deadline = time.monotonic() + timeout
    while lab.next_hops(vip) != want:
        if time.monotonic() > deadline:
            raise LabError(
                f"the router's route to {vip} is not via {sorted(nodes)} after {timeout:g}s"
            )
        time.sleep(0.05)


def wait_bfd(lab: NetLab, timeout: float = 30.0) -> None:
    """Until the router's BFD session with every node is up again (after a recovery): a run
    started before would measure the hold timer."""
    want = {str(lab.plan.host(n).ipv4) for n in lab.node_names()}
    deadline = time.monotonic() + timeout
    while bfd_up(lab) != want:
        if time.monotonic() > deadline:
            raise LabError(f"the router's BFD sessions are not all up after {timeout:g}s")
        time.sleep(0.1)


def one_run(lab: NetLab, vip: str, case: str, n: int) -> dict[str, Any]:
    nodes = lab.node_names()
    wait_hops(lab, vip, nodes)
    if lab.bfd:
        wait_bfd(lab)
    victim = nodes[n % len(nodes)]
    gone_ip = str(lab.plan.host(victim).ipv4)
    times: dict[str, float] = {}

    def act() -> None:
        time.sleep(1.0)
        if case == "drain":
            if lab.api(victim, "POST", f"/v1/nodes/{victim}/drain") is None:
                raise LabError(f"drain of {victim} failed")
        else:
            lab.crash(victim, case)
        times["act"] = time.monotonic()
        deadline = times["act"] + 15
        while gone_ip in lab.next_hops(vip) and time.monotonic() < deadline:
            time.sleep(0.01)
        times["gone"] = time.monotonic()

    samples = read_samples(
        run_prober(lab, f"bench-bgp-{case}-{n}", vip, "http", PROBE_SECONDS, act)
    )
    if case == "drain":
        lab.api(nodes[(n + 1) % len(nodes)], "POST", f"/v1/nodes/{victim}/undrain")
    else:
        lab.recover(victim, case)
    failed = sorted(s.t for s in samples if not s.ok)
    return {
        "victim": victim,
        "failed": len(failed),
        "samples": len(samples),
        "window_s": round(failed[-1] - failed[0], 4) if failed else 0.0,
        "withdrawn_s": round(times["gone"] - times["act"], 4),
    }


def bench_bgp(
    base: Path,
    runs: int,
    progress: Progress,
    routers: tuple[str, ...] = ROUTERS,
    cases: tuple[str, ...] = CASES,
    bfd: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": "bgp", "bfd": bfd, "routers": {}}
    for kind in routers:
        progress(f"router {kind}{' with BFD' if bfd else ''}: building the lab")
        out["routers"][kind] = _bench_router(base, runs, progress, kind, cases, bfd)
    return out


def _bench_router(
    base: Path, runs: int, progress: Progress, kind: str, cases: tuple[str, ...], bfd: bool
) -> dict[str, Any]:
    lab = NetLab.up(nodes=3, backends=2, router=kind, base=base, progress=lambda _: None, bfd=bfd)
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        vip = setup(lab)
        for n in range(runs):
            for case in cases:
                run = one_run(lab, vip, case, n)
                found.setdefault(case, []).append(run)
                progress(
                    f"{kind} [{n + 1}/{runs}] {case} of {run['victim']}: {run['failed']} failed "
                    f"requests over {1000 * run['window_s']:.0f} ms; route gone "
                    f"{1000 * run['withdrawn_s']:.0f} ms after the act"
                )
    finally:
        lab.down(progress=lambda _: None)
    summary = {}
    for case, results in found.items():
        windows = [r["window_s"] for r in results]
        gone = [r["withdrawn_s"] for r in results]
        summary[case] = {
            "runs": len(results),
            "runs_with_failures": sum(1 for r in results if r["failed"]),
            "failed_p50": percentile([float(r["failed"]) for r in results], 50),
            "window_p50_ms": round(1000 * percentile(windows, 50), 1),
            "window_max_ms": round(1000 * max(windows), 1),
            "withdrawn_p50_ms": round(1000 * percentile(gone, 50), 1),
            "withdrawn_max_ms": round(1000 * max(gone), 1),
        }
    return {"summary": summary, "runs": found}


def render_bgp(result: dict[str, Any]) -> str:
    lines = [
        "BGP mode (ECMP over 3 nodes): client behind the router, HTTP request every 10 ms;",
        "disruption = first to last failed request; route gone = act to the route leaving the",
        "router's kernel table:",
        f"  {'router':<6} {'case':<7} {'runs':>4} {'with fails':>10} {'failed p50':>10} "
        f"{'disruption p50':>15} {'max':>7}  {'route gone p50':>14} {'max':>7}",
    ]
    for kind, found in result["routers"].items():
        for case, s in found["summary"].items():
            lines.append(
                f"  {kind:<6} {case:<7} {s['runs']:>4} {s['runs_with_failures']:>10} "
                f"{s['failed_p50']:>10.0f} {s['window_p50_ms']:>15.0f} {s['window_max_ms']:>7.0f}"
                f"  {s['withdrawn_p50_ms']:>14.0f} {s['withdrawn_max_ms']:>7.0f}"
            )
    if result.get("bfd"):
        lines.append("  (ms; BFD 100 ms x 3: a silent node's route goes when BFD declares it down)")
    else:
        lines.append(
            "  (ms; a silent node's route goes when the router's hold timer (3 s) expires)"
        )
    return "\n".join(lines)
