"""A local appliance cluster on 127.0.0.1, without root: agents as background processes.

`up` generates configs (fresh Raft password and API token), starts one `raftlb agent` per node
in its own process group (so a kill of the group is a real crash, children included), waits
until every API answers and a leader is elected, and records pids in DIR/lab.json. `down` stops
them by pid (TERM, then KILL), checking first that a pid still runs our agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from appliance.lab import LabError, procs
from appliance.lab.configgen import NodeAddresses, write_cluster
from appliance.secretfile import read_secret

STATE_FILE = "lab.json"
Progress = Callable[[str], None]


@dataclass
class LocalNode:
    node_id: str
    config_path: str
    api_url: str
    log_path: str
    pid: int | None = None
    started: int | None = None  # start time of pid, against pid reuse


@dataclass
class LocalLab:
    dir: Path
    token_file: Path
    nodes: dict[str, LocalNode]

    @property
    def api_url(self) -> str:
        return next(iter(self.nodes.values())).api_url

    def token(self) -> str:
        return read_secret(self.token_file)

    def save(self) -> None:
        data = {
            "token_file": str(self.token_file),
            "nodes": {k: asdict(v) for k, v in self.nodes.items()},
        }
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.dir / STATE_FILE)


def load(directory: Path) -> LocalLab:
    try:
        data = json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        raise LabError(f"no local lab in {directory} (no {STATE_FILE})") from None
    nodes = {k: LocalNode(**v) for k, v in data["nodes"].items()}
    return LocalLab(dir=directory, token_file=Path(data["token_file"]), nodes=nodes)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free right now (held open together so they are distinct)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def agent_running(node: LocalNode) -> bool:
    """True if node.pid still runs the agent we started (not a zombie, not a reused pid)."""
    return procs.alive(node.pid, node.started)


def start_node(lab: LocalLab, node_id: str) -> int:
    """Start one node's agent in the background; return its pid."""
    node = lab.nodes[node_id]
    if agent_running(node):
        raise LabError(f"{node_id} is already running (pid {node.pid})")
    log = open(node.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "agent", "--config", node.config_path],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killing the group is a crash
            cwd=lab.dir,
        )
    finally:
        log.close()
    node.pid = proc.pid
    node.started = procs.start_time(proc.pid)
    lab.save()
    return proc.pid


def kill_node(lab: LocalLab, node_id: str, signum: int = signal.SIGKILL) -> None:
    """Signal a node's whole process group (SIGKILL by default: a crash)."""
    node = lab.nodes[node_id]
    if not agent_running(node):
        raise LabError(f"{node_id} is not running")
    assert node.pid is not None
    os.killpg(node.pid, signum)
    if signum in (signal.SIGKILL, signal.SIGTERM) and not procs.reap(node.pid, 15.0):
        # A stop that hangs must not leave a half-stopped node behind: finish it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        procs.reap(node.pid, 10.0)


def node_status(node: LocalNode, token: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """The node's /v1/status, or None if it does not answer."""
    try:
        resp = requests.get(
            f"{node.api_url}/v1/status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except requests.RequestException:
        return None
    if not resp.ok:
        return None
    data: dict[str, Any] = resp.json()
    return data


def wait_ready(
    lab: LocalLab, timeout: float, progress: Progress, nodes: list[str] | None = None
) -> str:
    """Wait until the given (default: all running) nodes answer and agree on a leader."""
    token = lab.token()
    wanted = nodes or [k for k, n in lab.nodes.items() if n.pid is not None]
    deadline = time.monotonic() + timeout
    last_note = ""
    while True:
        statuses = {k: node_status(lab.nodes[k], token) for k in wanted}
        leaders = {s["raft"]["leader"] for s in statuses.values() if s}
        if all(statuses.values()) and len(leaders) == 1 and None not in leaders:
            return str(leaders.pop())
        dead = [k for k in wanted if not agent_running(lab.nodes[k])]
        if dead:
            raise LabError(f"agent(s) {', '.join(dead)} exited; see {_log_hint(lab, dead)}")
        note = ", ".join(
            f"{k}: {'no answer' if s is None else 'leader ' + str(s['raft']['leader'])}"
            for k, s in statuses.items()
        )
        if note != last_note:
            progress(f"waiting for agents ({note})")
            last_note = note
        if time.monotonic() > deadline:
            raise LabError(
                f"cluster not ready after {timeout:g}s ({note}); see {_log_hint(lab, wanted)}"
            )
        time.sleep(0.1)


def _log_hint(lab: LocalLab, node_ids: list[str]) -> str:
    return ", ".join(lab.nodes[k].log_path for k in node_ids)


def up(
    directory: Path,
    nodes: int = 3,
    timing: str = "fast",
    progress: Progress = print,
    timeout: float = 60.0,
    raft: dict[str, Any] | None = None,
) -> tuple[LocalLab, str]:
    """Generate configs, start the agents, wait for a leader; return the lab and the leader.
    `raft` adds settings to every node's raft section."""
    if nodes < 1:
        raise LabError("--nodes must be at least 1")
    directory = directory.resolve()
    if (directory / STATE_FILE).exists():
        old = load(directory)
        if any(agent_running(n) for n in old.nodes.values()):
            raise LabError(f"a local lab already runs in {directory}: `raftlb lab local down`")
    ports = free_ports(2 * nodes)
    addresses = [
        NodeAddresses(f"n{i + 1}", f"127.0.0.1:{ports[2 * i]}", f"127.0.0.1:{ports[2 * i + 1]}")
        for i in range(nodes)
    ]
    generated, token_file = write_cluster(addresses, directory, timing, raft)
    lab = LocalLab(
        dir=directory,
        token_file=token_file,
        nodes={
            g.node_id: LocalNode(g.node_id, str(g.config_path), g.api_url, str(g.log_path))
            for g in generated
        },
    )
    lab.save()
    progress(f"starting {nodes} agent(s) in {directory}")
    try:
        for node_id in lab.nodes:
            pid = start_node(lab, node_id)
            progress(f"  {node_id}: pid {pid}, api {lab.nodes[node_id].api_url}")
        leader = wait_ready(lab, timeout, progress)
    except BaseException:
        down(directory, progress)
        raise
    return lab, leader


def down(directory: Path, progress: Progress = print, timeout: float = 10.0) -> list[str]:
    """Stop every agent of the lab in `directory`; return the ids that were running."""
    lab = load(directory)
    running = [k for k, n in lab.nodes.items() if agent_running(n)]
    for node_id in running:
        pid = lab.nodes[node_id].pid
        assert pid is not None
        progress(f"stopping {node_id} (pid {pid})")
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    for node_id in running:
        pid = lab.nodes[node_id].pid
        assert pid is not None
        if not procs.reap(pid, max(0.1, deadline - time.monotonic())):
            progress(f"{node_id} did not stop in {timeout:g}s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            procs.reap(pid, 5.0)
    for node in lab.nodes.values():
        node.pid = node.started = None
    lab.save()
    return running
