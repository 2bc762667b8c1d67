"""Helpers of the loopback integration tests: the running lab and its HTTP API, polling, timing
records, agent log tails and the teardown that checks no process of the lab survives.

A module of its own (not conftest.py) so the tests import one copy of it whatever other
conftest files exist in the tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from appliance.config import load_config
from appliance.lab import local

LOG_TAIL_LINES = 80
T = TypeVar("T")

# Figures measured by the tests, printed in the terminal summary by conftest.py.
TIMINGS: list[str] = []


def record_timing(test: str, what: str, seconds: float) -> None:
    """Note a measured figure; all of them are printed at the end of the run."""
    line = f"{test}: {what} {seconds:.3f} s"
    TIMINGS.append(line)
    print(line)


def agent_log_tails(directory: Path, lines: int = LOG_TAIL_LINES) -> list[tuple[str, str]]:
    out = []
    for path in sorted(directory.glob("*/agent.log")):
        try:
            text = path.read_text(errors="replace")
        except OSError as exc:
            text = f"(cannot read {path}: {exc})"
        tail = "\n".join(text.splitlines()[-lines:])
        out.append((f"{path.parent.name} ({path})", tail or "(empty)"))
    return out


# -- the cluster under test ---------------------------------------------------------------------


def poll(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call `check` until it returns something other than None/False; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class LabCluster:
    """A running local lab plus the HTTP helpers the tests need."""

    def __init__(
        self, lab: local.LocalLab, leader: str, progress: list[str], startup: float
    ) -> None:
        self.lab = lab
        self.first_leader = leader
        self.progress = progress
        self.startup_seconds = startup  # from starting the agents to an agreed leader
        self.token = lab.token()
        self.headers = {
            "Authorization": f"Bearer {self.token}",
            # No keep-alive: agents are killed and restarted on the same port during a test.
            "Connection": "close",
        }
        node = next(iter(lab.nodes.values()))
        self.write_timeout = load_config(Path(node.config_path)).api.write_timeout

    @property
    def ids(self) -> list[str]:
        return sorted(self.lab.nodes)

    def url(self, node_id: str, path: str) -> str:
        return f"{self.lab.nodes[node_id].api_url}{path}"

    def request(
        self,
        method: str,
        node_id: str,
        path: str,
        body: Any = None,
        timeout: float = 3.0,
        connect: float = 1.0,
    ) -> requests.Response:
        return requests.request(
            method,
            self.url(node_id, path),
            json=body,
            headers=self.headers,
            timeout=(connect, timeout),
        )

    def get(self, node_id: str, path: str, timeout: float = 3.0) -> requests.Response:
        return self.request("GET", node_id, path, timeout=timeout)

    def write(
        self, method: str, node_id: str, path: str, body: Any, timeout: float | None = None
    ) -> requests.Response:
        """A write; the client waits longer than the server's write timeout."""
        return self.request(
            method, node_id, path, body, timeout=timeout or self.write_timeout + 5.0
        )

    def write_ok(self, method: str, node_id: str, path: str, body: Any) -> Any:
        resp = self.write(method, node_id, path, body)
        assert resp.status_code == 200, (
            f"{method} {path} on {node_id}: {resp.status_code} {resp.text}"
        )
        return resp.json()

    def status(self, node_id: str) -> dict[str, Any] | None:
        return local.node_status(self.lab.nodes[node_id], self.token, timeout=1.0)

    def state(self, node_id: str) -> dict[str, Any] | None:
        """Pools, services and allocations as this node's replica has them (None: no answer)."""
        out = {}
        for kind in ("pools", "services", "allocations"):
            try:
                resp = self.get(node_id, f"/v1/{kind}", timeout=2.0)
            except requests.RequestException:
                return None
            if resp.status_code != 200:
                return None
            out[kind] = resp.json()
        return out

    def wait_state(self, node_id: str, expected: dict[str, Any], timeout: float = 10.0) -> None:
        def matches() -> bool:
            return self.state(node_id) == expected

        if not poll_quietly(matches, timeout):
            got = self.state(node_id)
            pytest.fail(
                f"{node_id}'s state does not match after {timeout:g}s:\n"
                f"expected {expected}\ngot      {got}"
            )

    def running(self, node_id: str) -> bool:
        return local.agent_running(self.lab.nodes[node_id])

    def kill(self, node_id: str) -> None:
        """kill -9 of the node's whole process group: a crash."""
        local.kill_node(self.lab, node_id, signal.SIGKILL)
        assert not self.running(node_id)

    def start(self, node_id: str) -> None:
        local.start_node(self.lab, node_id)

    def wait_ready(self, nodes: list[str], timeout: float = 30.0) -> str:
        return local.wait_ready(self.lab, timeout, self.progress.append, nodes=nodes)

    def settled(self, leader: str) -> bool:
        """The leader's planner keeps no node warming and holds no VIP itself: no planned move
        is on its way (a fresh cluster's leader hands its start-up share over after the
        others' warmup, with `vips_on_leader: avoid`)."""
        nodes = self.get(leader, "/v1/nodes")
        vips = self.get(leader, "/v1/vips")
        if nodes.status_code != 200 or vips.status_code != 200:
            return False
        warm = all(n.get("warming") is False for n in nodes.json())
        return warm and all(v["node"] not in (None, leader) for v in vips.json())

    def leader_of(self, node_id: str) -> str | None:
        status = self.status(node_id)
        return status["raft"]["leader"] if status else None

    def followers(self, leader: str) -> list[str]:
        return [k for k in self.ids if k != leader]

    def slow_syncs(self) -> int:
        """Journal syncs of at least 100 ms so far, over all nodes (from /metrics).

        This machine's disk sometimes stalls a flush for 100-500 ms; a node whose Raft tick
        waits that long may see an election that no test input caused. Tests that assert "no
        election" take a difference of this across their window to tell the two apart."""
        slow = 0
        for node_id in self.ids:
            response = self.get(node_id, "/metrics")
            response.raise_for_status()
            for family in text_string_to_metric_families(response.text):
                if family.name != "raftlb_raft_journal_sync_seconds":
                    continue
                buckets = {
                    s.labels.get("le"): s.value
                    for s in family.samples
                    if s.name.endswith("_bucket")
                }
                slow += int(buckets.get("+Inf", 0) - buckets.get("0.1", 0))
        return slow


def poll_quietly(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Like `poll` but return False on timeout, so the caller can fail with the details."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class StatusWatcher:
    """Poll some nodes' /v1/status in a thread; note when they first agree on a leader among
    `candidates` (used to time elections while the test thread does something else)."""

    def __init__(self, cluster: LabCluster, nodes: list[str], candidates: list[str]) -> None:
        self._cluster = cluster
        self._nodes = nodes
        self._candidates = set(candidates)
        self._stop = threading.Event()
        self.agreed_at: float | None = None
        self.leader: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> StatusWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set() and self.agreed_at is None:
            leaders = {self._cluster.leader_of(k) for k in self._nodes}
            if len(leaders) == 1:
                (leader,) = leaders
                if leader in self._candidates:
                    self.agreed_at = time.monotonic()
                    self.leader = leader
                    return
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def _processes_mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of every process whose command line contains `text` (leftover check)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            out.append((int(entry.name), cmdline.strip()))
    return out


def teardown_lab(directory: Path, progress: list[str]) -> None:
    """Stop every agent of the lab (`lab down`); kill by pid, and report, any process of the
    lab that survives it (a stray agent, a pysyncobj dump child)."""
    try:
        if (directory / local.STATE_FILE).exists():
            local.down(directory, progress.append)
    finally:
        leftovers = _processes_mentioning(str(directory))
        for pid, _ in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes of the lab survived `lab down`: {leftovers}"
