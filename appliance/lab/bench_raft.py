"""`raftlb lab bench raft`: what durable Raft storage costs a commit (raft/durable.py).

Three nodes on loopback in this process, their data dirs on a real disk (`--dir`, /var/tmp by
default: /tmp may be a tmpfs, where a sync costs nothing); rounds alternate plain (journal
entries left to the page cache; votes and dumps are synced in both) and durable (the journal
flushed before every message), each a run of sequential commits through the leader. The ratio
durable/plain of the medians is the cost.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.lab.local import free_ports
from appliance.model import Pool
from raft.cluster import RaftCluster, RaftSettings
from raft.commands import PutPool
from raft.timing import PROFILES


def _round(folder: Path, durable: bool, commits: int) -> list[float]:
    ports = free_ports(3)
    peers = {f"n{i}": f"127.0.0.1:{ports[i - 1]}" for i in (1, 2, 3)}
    nodes = [
        RaftCluster(
            RaftSettings(
                n, peers[n], peers, "x" * 20, folder / n, PROFILES["fast"], durable=durable
            )
        )
        for n in peers
    ]
    try:
        deadline = time.monotonic() + 15
        while not all(c.status().leader for c in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("no leader in 15 s")
            time.sleep(0.05)
        leader = next(c for c in nodes if c.status().leader == c.node_id)

        async def commit_all() -> list[float]:
            out = []
            for i in range(commits):
                pool = Pool(name=f"p{i % 250}", addresses=[f"198.51.100.{i % 250}/32"])
                started = time.perf_counter()
                result = await leader.submit(PutPool(pool=pool), 5.0)
                out.append(time.perf_counter() - started)
                if not result.get("ok"):
                    raise RuntimeError(f"commit refused: {result}")
            return out

        return asyncio.run(commit_all())
    finally:
        for node in nodes:
            node.close()


def bench_raft(
    directory: Path, rounds: int, commits: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="raftlb-bench-raft.", dir=directory))
    latencies: dict[str, list[float]] = {"plain": [], "durable": []}
    try:
        for index in range(rounds):
            for mode in ("plain", "durable"):
                progress(f"round {index + 1}/{rounds}: {commits} commits, {mode}")
                folder = base / f"{mode}-{index}"
                latencies[mode] += _round(folder, mode == "durable", commits)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out: dict[str, Any] = {"commits": commits * rounds, "dir": str(directory)}
    for mode, values in latencies.items():
        values.sort()
        out[mode] = {
            "p50_ms": round(statistics.median(values) * 1000, 2),
            "p99_ms": round(values[int(len(values) * 0.99)] * 1000, 2),
        }
    out["ratio_p50"] = round(out["durable"]["p50_ms"] / out["plain"]["p50_ms"], 2)
    return out


def render_raft(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{result['commits']} sequential commits per mode, 3 nodes, data on {result['dir']}",
            *(
                f"  {mode:8} p50 {result[mode]['p50_ms']:.2f} ms"
                f"  p99 {result[mode]['p99_ms']:.2f} ms"
                for mode in ("plain", "durable")
            ),
            f"  durable/plain (p50): {result['ratio_p50']:.2f}x",
        ]
    )
