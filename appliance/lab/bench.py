"""`raftlb lab bench lab`: what the lab itself costs and how fine the prober sees.

Measures, in one run: `NetLab.up` and `down` times (the default lab: 3 nodes with their agents
up and a leader elected, 2 backends); the prober's achieved schedule against a backend directly
(send gaps p50/p99/max per protocol: its resolution); and the outage it reports for short cuts
of known length (the backend's switch port down for 20, 50 and 100 ms), which is the smallest
outage it can see in practice.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from appliance.lab import LabError, netns, procs
from appliance.lab.netlab import NetLab, Progress
from appliance.lab.outage import outages, percentile, send_gaps
from appliance.lab.prober import read_samples
from appliance.lab.topology import BACKEND_HTTP_PORT, BACKEND_TCP_PORT, BACKEND_UDP_PORT

PORTS = {"http": BACKEND_HTTP_PORT, "tcp": BACKEND_TCP_PORT, "udp": BACKEND_UDP_PORT}
CUTS_MS = (20, 50, 100)


def run_prober(
    lab: NetLab, key: str, target: str, proto: str, seconds: float, during: Any = None
) -> Path:
    """Run the prober in the client for `seconds`, calling `during()` meanwhile; its samples."""
    out = lab.dir / f"{key}.jsonl"
    argv = [sys.executable, "-m", "appliance.lab.prober", "--target", target]
    argv += ["--port", str(PORTS[proto]), "--proto", proto, "--duration", str(seconds)]
    pid = lab.spawn(key, "client", [*argv, "--out", str(out)])
    try:
        if during is not None:
            during()
        if not procs.reap(pid, timeout=seconds + 30):
            raise LabError(f"the prober ({key}) did not finish; see {lab.log_path(key)}")
    finally:
        lab.pids.pop(key, None)
        lab.save()
    return out


def _ms(value: float) -> float:
    return round(1000 * value, 2)


def bench_lab(base: Path, seconds: float, progress: Progress) -> dict[str, Any]:
    started = time.monotonic()
    lab = NetLab.up(nodes=3, backends=2, base=base, progress=lambda _: None)
    result: dict[str, Any] = {"up_s": round(time.monotonic() - started, 3)}
    progress(f"lab up in {result['up_s']:.2f}s")
    try:
        backend = lab.plan.of_kind("backend")[0]
        target = str(backend.ipv4)
        schedule: dict[str, Any] = {}
        for proto in PORTS:
            progress(f"prober {proto} against {backend.name} directly for {seconds:g}s")
            samples = read_samples(run_prober(lab, f"bench-{proto}", target, proto, seconds))
            gaps = send_gaps(samples)
            latencies = [s.latency for s in samples if s.latency is not None]
            schedule[proto] = {
                "samples": len(samples),
                "failed": sum(1 for s in samples if not s.ok),
                "gap_p50_ms": _ms(percentile(gaps, 50)),
                "gap_p99_ms": _ms(percentile(gaps, 99)),
                "gap_max_ms": _ms(max(gaps)),
                "latency_p50_ms": _ms(percentile(latencies, 50)),
                "latency_p99_ms": _ms(percentile(latencies, 99)),
            }
        result["schedule"] = schedule
        port = backend.interfaces[0].switch_port
        assert port is not None
        cuts = []
        for cut_ms in CUTS_MS:
            progress(f"cutting {backend.name}'s link for {cut_ms} ms under the HTTP prober")

            def cut(ms: int = cut_ms) -> None:
                time.sleep(0.8)
                netns.set_link(lab.plan.switch_ns, port, up=False)
                time.sleep(ms / 1000)
                netns.set_link(lab.plan.switch_ns, port, up=True)

            out = run_prober(lab, f"bench-cut-{cut_ms}", target, "http", 2.0, cut)
            seen = outages(read_samples(out))
            cuts.append(
                {
                    "cut_ms": cut_ms,
                    "outages": len(seen),
                    "seen_ms": [_ms(o.duration) for o in seen],
                }
            )
        result["cuts"] = cuts
    finally:
        started = time.monotonic()
        lab.down(progress=lambda _: None)
        result["down_s"] = round(time.monotonic() - started, 3)
        progress(f"lab down in {result['down_s']:.2f}s")
    return result


def render_lab(result: dict[str, Any]) -> str:
    lines = [
        f"lab up {result['up_s']:.2f}s (3 nodes, 2 backends, agents up and a leader elected), "
        f"down {result['down_s']:.2f}s"
    ]
    lines.append("prober against a backend directly (its resolution):")
    lines.append("  proto  samples failed  gap p50/p99/max ms     latency p50/p99 ms")
    for proto, s in result["schedule"].items():
        lines.append(
            f"  {proto:<6} {s['samples']:>7} {s['failed']:>6}  "
            f"{s['gap_p50_ms']:>6.2f} / {s['gap_p99_ms']:>6.2f} / {s['gap_max_ms']:>6.2f}   "
            f"{s['latency_p50_ms']:>6.2f} / {s['latency_p99_ms']:>6.2f}"
        )
    lines.append("short link cuts of the backend, as the HTTP prober reports them:")
    for cut in result["cuts"]:
        seen = ", ".join(f"{ms:.0f} ms" for ms in cut["seen_ms"]) or "nothing"
        lines.append(f"  cut {cut['cut_ms']:>3} ms -> outage seen: {seen}")
    return "\n".join(lines)


def main_lab(base: Path, seconds: float, as_json: bool, progress: Progress) -> str:
    result = bench_lab(base, seconds, progress)
    return json.dumps(result, indent=2) if as_json else render_lab(result)
