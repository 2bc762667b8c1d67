"""pysyncobj traps, each with the fix that avoids it (FACTS.md, "Found while prototyping").

Trap 1: pysyncobj checks a link's idle timeout only when data arrives, so on a follower-to-
follower link, idle in Raft, the first message after connection_timeout closes the link; after
a leader dies that message is the vote request, the vote is lost and the election is retried
(two terms, ~0.4 s). RaftCluster keeps every link warm. Without the fix the survivors need two
terms; with it, one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

NODE = r"""
import sys, time
from pathlib import Path
from raft.cluster import RaftCluster, RaftSettings
from raft.timing import PROFILES
me, keepalive, data, base = sys.argv[1], sys.argv[2] == "1", sys.argv[3], int(sys.argv[4])
peers = {f"n{i}": f"127.0.0.1:{base + i}" for i in (1, 2, 3)}
cluster = RaftCluster(RaftSettings(me, peers[me], peers, "x" * 20, Path(data) / me,
                                   PROFILES["fast"], keepalive=keepalive))
last = None
while True:
    status = cluster.status()
    if (status.leader, status.term) != last:
        last = (status.leader, status.term)
        print(f"{time.monotonic():.4f} {status.leader} {status.term}", flush=True)
    time.sleep(0.005)
"""


def _free_base() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return min(port, 60000)


def _lines(proc: subprocess.Popen[str]) -> list[list[str]]:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    return [line.split() for line in (proc.stdout.read() or "").splitlines() if line.strip()]


def _election_terms(tmp: Path, keepalive: bool) -> int | None:
    """Start 3 nodes, let links idle past connection_timeout, kill the leader; return how many
    terms the survivors needed to agree on a new leader (None: no leader within 3 s)."""
    base = _free_base()
    procs = {
        n: subprocess.Popen(
            [sys.executable, "-c", NODE, n, "1" if keepalive else "0", str(tmp), str(base)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for n in ("n1", "n2", "n3")
    }
    try:
        time.sleep(2.5)  # > connection_timeout (1 s) of idle follower-to-follower links
        seen = {n: _lines(p) for n, p in procs.items()}
        leader, term = seen["n1"][-1][1], int(seen["n1"][-1][2])
        assert leader != "None", seen
        killed_at = time.monotonic()
        os.killpg(procs[leader].pid, signal.SIGKILL)
        time.sleep(3.0)
        survivor = next(n for n in procs if n != leader)
        new = [
            line
            for line in _lines(procs[survivor])
            if float(line[0]) > killed_at and line[1] not in ("None", leader)
        ]
        # Cold links can lose vote after vote (each request closes the link it travels on).
        return int(new[0][2]) - term if new else None
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.integration
def test_warm_links_elect_in_one_term_cold_links_need_two(tmp_path: Path) -> None:
    warm = Counter(_election_terms(tmp_path / f"w{i}", keepalive=True) for i in range(3))
    cold = Counter(_election_terms(tmp_path / f"c{i}", keepalive=False) for i in range(3))
    print(f"terms needed: warm {dict(warm)}, cold {dict(cold)}")
    # Random election timeouts can split a vote now and then: judge by the majority.
    assert warm.most_common(1)[0][0] == 1, warm
    worst = cold.most_common(1)[0][0]
    assert worst is None or worst >= 2, cold
