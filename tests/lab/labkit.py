"""Helpers of the namespace-lab tests: what a lab left behind, diagnostics, pings, polling.

`Footprint` records everything a lab owns while it is up (namespaces and their inodes, every
process inside them, the veth names it uses, its run dir and registry entry) so that after
`down` the test can prove none of it survived. `remove_labs_under(base)` is the tests' own,
narrow `down --all`: it removes only labs whose run dir lives under `base`, never another
engineer's lab or orphan (`netlab.down_all` also sweeps unregistered `rlb-*` namespaces).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from appliance.lab import netns, procs
from appliance.lab.netlab import REGISTRY, RUN_ID, STATE_FILE, NetLab
from appliance.lab.topology import NS_PREFIX, LabPlan, plan

T = TypeVar("T")
MakeLab = Callable[..., NetLab]  # the make_lab fixture: make_lab(nodes=3, backends=2, ...)
LOG_TAIL_LINES = 40
DIAGNOSTICS = (
    ("ip -br addr", ["ip", "-br", "addr"]),
    ("ip neigh", ["ip", "neigh"]),
    ("ip route", ["ip", "route"]),
    ("ip -6 route", ["ip", "-6", "route"]),
    ("nft list ruleset", ["nft", "list", "ruleset"]),
)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; AssertionError naming `what` if not."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s (last: {value!r})")
        time.sleep(interval)


# ---------------------------------------------------------------------------- what a lab owns


def lab_namespaces(run_id: str) -> list[str]:
    """The namespaces of run `run_id` as `ip netns list` reports them (not via pyroute2)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(f"{NS_PREFIX}{run_id}-"))


def root_veths() -> set[str]:
    """Names of the veth interfaces in the root (host) namespace."""
    out = subprocess.run(
        ["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True, check=True
    )
    # "12: p-n1@if11: <...>" -> "p-n1"
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def interface_names(lab_plan: LabPlan) -> set[str]:
    names = {lab_plan.bridge}
    for host in lab_plan.hosts:
        for iface in host.interfaces:
            names.add(iface.name)
            if iface.switch_port:
                names.add(iface.switch_port)
    return names


@dataclass
class Footprint:
    """Everything of one lab run, recorded while it is up; `leftovers()` after its removal."""

    run_id: str
    run_dir: Path
    lab_plan: LabPlan
    inodes: set[int] = field(default_factory=set)
    processes: dict[int, int | None] = field(default_factory=dict)  # pid -> start time
    veths_before: set[str] = field(default_factory=set)
    taken_at: float = 0.0

    @classmethod
    def of(cls, lab: NetLab, veths_before: set[str] | None = None) -> Footprint:
        return cls.record(lab.run_id, lab.dir, lab.plan, lab.pids.values(), veths_before)

    @classmethod
    def record(
        cls,
        run_id: str,
        run_dir: Path,
        lab_plan: LabPlan,
        pids: Iterable[list[int | None]] = (),
        veths_before: set[str] | None = None,
    ) -> Footprint:
        fp = cls(run_id, run_dir, lab_plan, veths_before=veths_before or set())
        for pid, started in pids:
            if pid is not None and procs.alive(pid, started):
                fp.processes[pid] = started
        for name in lab_plan.namespaces():
            with contextlib.suppress(FileNotFoundError):
                fp.inodes.add(os.stat(netns.NETNS_DIR / name).st_ino)
            for pid in netns.pids_in(name):
                fp.processes.setdefault(pid, procs.start_time(pid))
        fp.taken_at = time.clock_gettime(time.CLOCK_BOOTTIME)
        return fp

    def to_json(self) -> str:
        return json.dumps(
            {
                "run_id": self.run_id,
                "run_dir": str(self.run_dir),
                "plan": [
                    len(self.lab_plan.of_kind("node")),
                    len(self.lab_plan.of_kind("backend")),
                    self.lab_plan.router,
                ],
                "inodes": sorted(self.inodes),
                "processes": [[pid, started] for pid, started in self.processes.items()],
                "veths_before": sorted(self.veths_before),
                "taken_at": self.taken_at,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Footprint:
        data = json.loads(text)
        nodes, backends, router = data["plan"]
        return cls(
            run_id=data["run_id"],
            run_dir=Path(data["run_dir"]),
            lab_plan=plan(data["run_id"], nodes, backends, router),
            inodes=set(data["inodes"]),
            processes={pid: started for pid, started in data["processes"]},
            veths_before=set(data["veths_before"]),
            taken_at=data["taken_at"],
        )

    @classmethod
    def from_run_dir(cls, run_dir: Path, veths_before: set[str] | None = None) -> Footprint:
        lab = NetLab.load(run_dir)
        return cls.of(lab, veths_before)

    def leftovers(self) -> list[str]:
        """What of this lab still exists, one line each (empty: nothing)."""
        found = [f"namespace {n}" for n in lab_namespaces(self.run_id)]
        for pid, started in sorted(self.processes.items()):
            if procs.alive(pid, started):
                found.append(f"process {pid} ({_cmdline(pid)})")
        # A process that escaped the recording but still lives in one of the lab's namespaces
        # (possibly detached from its name). Only processes older than the recording count: the
        # inode of a freed namespace may already belong to someone else's new one.
        ticks = os.sysconf("SC_CLK_TCK")
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in self.processes:
                continue
            pid = int(entry.name)
            started = procs.start_time(pid)
            older = started is not None and started / ticks <= self.taken_at
            if older and _netns_inode(pid) in self.inodes:
                found.append(f"process {pid} in a lab namespace ({_cmdline(pid)})")
        # The lab makes its veths inside its namespaces; one that shows up in the root namespace
        # under one of the lab's interface names is a leak (other names: someone else's).
        new = sorted((root_veths() - self.veths_before) & interface_names(self.lab_plan))
        found += [f"veth {v} in the root namespace" for v in new]
        if self.run_dir.exists():
            content = sorted(str(p.relative_to(self.run_dir)) for p in self.run_dir.rglob("*"))
            found.append(f"run dir {self.run_dir} holding {content[:12]}")
        if (REGISTRY / self.run_id).exists():
            found.append(f"registry entry {REGISTRY / self.run_id}")
        return found


def remove_labs_under(base: Path, run_ids: Iterable[str] = ()) -> list[str]:
    """Remove every lab whose run dir is under `base` (and the named runs), also half-built or
    crashed ones: processes by pid, then anything still in their namespaces, the namespaces,
    registry entries and run dirs. Returns the run ids that had something to remove."""
    runs = set(run_ids)
    if base.is_dir():
        runs |= {p.name for p in base.iterdir() if p.is_dir() and RUN_ID.fullmatch(p.name)}
    removed = []
    for run_id in sorted(runs):
        run_dir = base / run_id
        had = run_dir.exists() or bool(lab_namespaces(run_id))
        if (run_dir / STATE_FILE).is_file():
            with contextlib.suppress(Exception):
                NetLab.load(run_dir).down(progress=lambda _: None)
        netns.destroy(lab_namespaces(run_id))
        (REGISTRY / run_id).unlink(missing_ok=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        if had:
            removed.append(run_id)
    return removed


# ---------------------------------------------------------------------------- diagnostics


def _run_in(ns: str, argv: list[str]) -> str:
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<{exc}>"
    return out.stdout + out.stderr


def diagnostics(lab: NetLab) -> list[tuple[str, str]]:
    """Report sections for a failed test: per namespace its addresses, neighbours, routes and
    nft ruleset; then the tail of every log of the run."""
    sections: list[tuple[str, str]] = []
    present = set(lab_namespaces(lab.run_id))
    for host in lab.plan.hosts:
        if host.netns not in present:
            sections.append((f"lab {lab.run_id} {host.name}", "namespace is gone"))
            continue
        parts = []
        for title, argv in DIAGNOSTICS:
            try:
                out = lab.exec(host.name, argv, capture_output=True, text=True, timeout=10)
                text = out.stdout + out.stderr
            except (OSError, subprocess.TimeoutExpired) as exc:
                text = f"<{exc}>"
            parts.append(f"$ {title}\n{text.rstrip() or '(empty)'}")
        sections.append((f"lab {lab.run_id} {host.name} ({host.netns})", "\n".join(parts)))
    if lab.plan.switch_ns in present:
        parts = [
            f"$ {title}\n{_run_in(lab.plan.switch_ns, argv).rstrip() or '(empty)'}"
            for title, argv in (("ip -br link", ["ip", "-br", "link"]), *DIAGNOSTICS[:1])
        ]
        sections.append((f"lab {lab.run_id} switch ({lab.plan.switch_ns})", "\n".join(parts)))
    sections += log_tails(lab.dir)
    return sections


def log_tails(run_dir: Path, lines: int = LOG_TAIL_LINES) -> list[tuple[str, str]]:
    """The last `lines` lines of every log of a run (kept also after a failed start)."""
    logs = run_dir / "logs"
    if not logs.is_dir():
        return []
    out = []
    for path in sorted(logs.iterdir()):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append((f"log {run_dir.name}/{path.name} (last {lines} lines)", "\n".join(text)))
    return out


# ---------------------------------------------------------------------------- looking inside


def ping(lab: NetLab, host: str, address: object) -> subprocess.CompletedProcess[str]:
    """One ping from inside `host` (IPv4 or IPv6 by the address), 2 s timeout."""
    if shutil.which("ping") is None:
        pytest.skip("needs `ping` (apt-get install iputils-ping)")
    return lab.exec(
        host, ["ping", "-n", "-c1", "-W2", str(address)], capture_output=True, text=True
    )


def status_in(lab: NetLab, node: str, via: str | None = None, timeout: float = 1.0) -> Any:
    """`node`'s /v1/status asked from inside `via`'s namespace (default: the node's own);
    None when it does not answer."""
    return lab.api(node, "GET", "/v1/status", via=via or node, timeout=timeout)


def agreed_leader(lab: NetLab, nodes: Iterable[str]) -> str | None:
    """The leader all of `nodes` name (asked from the client), None if they do not agree."""
    statuses = lab.statuses()
    leaders = {(statuses.get(n) or {}).get("raft", {}).get("leader") for n in nodes}
    return str(leaders.pop()) if len(leaders) == 1 and None not in leaders else None


def process_states(lab: NetLab, host: str) -> dict[int, str]:
    """pid -> state letter (R, S, T, ...) of every process in `host`'s namespace."""
    states = {}
    for pid in netns.pids_in(lab.plan.host(host).netns):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            states[pid] = stat.rpartition(")")[2].split()[0]
    return states
