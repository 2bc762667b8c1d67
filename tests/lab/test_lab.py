"""The namespace lab's life cycle: up, down, failed starts, interrupted demos, parallel labs.

"Nothing left" always means all of it (labkit.Footprint): no `rlb-<run>-*` namespace (the
switch's included), no process of the lab (its recorded pids and anything that ran in its
namespaces), no veth of it in the root namespace, no run dir, no registry entry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from appliance.lab.netlab import REGISTRY, STATE_FILE, NetLab, list_runs
from tests.lab.labkit import (
    Footprint,
    agreed_leader,
    lab_namespaces,
    ping,
    remove_labs_under,
    root_veths,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
QUIET = lambda _: None  # noqa: E731 - a progress callback that says nothing


def raftlb_lab(*args: str) -> list[str]:
    return [sys.executable, "-m", "appliance.cli", "lab", *args]


def test_up_then_down_leaves_nothing(tmp_path: Path) -> None:
    base = tmp_path / "base"
    veths = root_veths()
    lab = NetLab.up(nodes=3, backends=2, base=base, progress=QUIET)
    try:
        footprint = Footprint.of(lab, veths)
        # The checker sees the lab while it is up, so an empty list afterwards means something.
        assert lab_namespaces(lab.run_id) == sorted(lab.plan.namespaces())
        assert len(footprint.inodes) == len(lab.plan.namespaces()) == 7
        assert sorted(lab.pids) == [
            "agent-n1",
            "agent-n2",
            "agent-n3",
            "backend-b1",
            "backend-b2",
        ]
        assert all(lab.alive(key) for key in lab.pids)
        assert {p for p, _ in lab.pids.values()} <= set(footprint.processes)
        assert (REGISTRY / lab.run_id).read_text() == str(lab.dir)
        assert list_runs(base) == [lab.run_id]
        before = footprint.leftovers()
        assert sum(line.startswith("namespace ") for line in before) == 7, before
        assert sum(line.startswith("process ") for line in before) >= 5, before
        assert any(line.startswith("run dir ") for line in before), before
        assert any(line.startswith("registry entry ") for line in before), before
    finally:
        lab.down(progress=QUIET)
        left = footprint.leftovers()
        remove_labs_under(base, [lab.run_id])
    assert left == []
    assert list_runs(base) == []


def _inject_failure_at(
    base: Path, stage: str, veths: set[str], seen: list[Footprint]
) -> Callable[[str], None]:
    """A progress callback that raises once the lab's namespaces (stage "network") or also its
    agents (stage "agents") exist, after recording its footprint. Progress is NetLab.up's
    public hook, called between the steps of a start."""

    def progress(message: str) -> None:
        if seen:
            return
        (run_dir,) = [p.parent for p in base.glob(f"*/{STATE_FILE}")]
        lab = NetLab.load(run_dir)
        if lab_namespaces(lab.run_id) != sorted(lab.plan.namespaces()):
            return
        agents = [key for key in lab.pids if key.startswith("agent-")]
        if stage == "agents" and len(agents) < lab.nodes:
            return
        seen.append(Footprint.of(lab, veths))
        raise RuntimeError(f"injected failure once the {stage} existed (at {message!r})")

    return progress


@pytest.mark.parametrize("stage", ["network", "agents"])
def test_a_lab_whose_start_fails_halfway_is_removed(tmp_path: Path, stage: str) -> None:
    base = tmp_path / "base"
    veths = root_veths()
    seen: list[Footprint] = []
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            NetLab.up(
                nodes=3,
                backends=2,
                base=base,
                progress=_inject_failure_at(base, stage, veths, seen),
            )
        (footprint,) = seen
        if stage == "agents":
            assert len(footprint.processes) >= 5, footprint.processes
        left = footprint.leftovers()
        # A failed start keeps its logs on purpose (and says so): that, and only that, may stay.
        kept = [line for line in left if line.startswith("run dir ")]
        assert [line for line in left if line not in kept] == []
        assert not (footprint.run_dir / STATE_FILE).exists()
        assert list_runs(base) == []
        if kept:
            assert (footprint.run_dir / "logs").is_dir()
    finally:
        remove_labs_under(base)


INNER_TESTS = """
from pathlib import Path

import pytest

from appliance.lab.netlab import NetLab
from tests.lab.labkit import Footprint

HERE = Path(__file__).parent


@pytest.fixture
def netlab():
    lab = NetLab.up(nodes=3, backends=1, base=HERE / "inner-base", progress=lambda _: None)
    try:
        yield lab
    finally:
        lab.down(progress=lambda _: None)


def test_own_fixture_fails_halfway(netlab):
    assert netlab.wait_leader(timeout=30)
    (HERE / "footprint-own.json").write_text(Footprint.of(netlab).to_json())
    assert False, "failing halfway on purpose"


def test_make_lab_fails_halfway(make_lab):
    lab = make_lab(nodes=1, backends=1)
    (HERE / "footprint-make.json").write_text(Footprint.of(lab).to_json())
    assert False, "failing halfway on purpose"
"""


INNER_PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "90"]
INNER_PYTEST += ["-p", "tests.lab.conftest", "test_inner.py"]


def test_a_failing_test_with_a_lab_fixture_still_cleans_up(tmp_path: Path) -> None:
    """An inner pytest run whose tests fail while their labs are up: one with its own NetLab.up
    fixture, one with this suite's make_lab (whose failure report must carry the dumps)."""
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "pytest.ini").write_text("[pytest]\n")
    (inner / "test_inner.py").write_text(INNER_TESTS)
    veths = root_veths()
    try:
        result = subprocess.run(
            INNER_PYTEST,
            cwd=inner,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=110,
            check=False,
        )
        out = result.stdout + result.stderr
        assert result.returncode == 1, out
        assert "2 failed" in out, out
        assert out.count("failing halfway on purpose") >= 2, out
        own = Footprint.from_json((inner / "footprint-own.json").read_text())
        made = Footprint.from_json((inner / "footprint-make.json").read_text())
        for footprint in (own, made):
            footprint.veths_before = veths
            assert footprint.processes, "the inner lab ran no process?"
            assert footprint.leftovers() == []
        # The failure report of the make_lab test: network state per namespace and log tails.
        for title in ("ip -br addr", "ip neigh", "ip route", "nft list ruleset"):
            assert f"$ {title}" in out, title
        assert f"lab {made.run_id} client ({made.lab_plan.host('client').netns})" in out
        assert f"lab {made.run_id} n1 " in out and f"lab {made.run_id} b1 " in out
        assert f"log {made.run_id}/agent-n1.log" in out
        assert "192.0.2.100/24" in out  # the client's address, from `ip -br addr`
    finally:
        remove_labs_under(inner / "inner-base")
        for path in inner.glob("footprint-*.json"):
            footprint = Footprint.from_json(path.read_text())
            remove_labs_under(footprint.run_dir.parent, [footprint.run_id])


def _read_lines(stream: object, lines: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.append(line)


@pytest.mark.parametrize("moment", ["while it starts", "once it is up"])
def test_demo_interrupted_with_ctrl_c_leaves_nothing(tmp_path: Path, moment: str) -> None:
    base = tmp_path / "base"
    veths = root_veths()
    proc = subprocess.Popen(
        raftlb_lab("demo", "--base", str(base)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    lines: list[str] = []
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    run_id = ""
    try:
        state = wait_for(lambda: next(base.glob(f"*/{STATE_FILE}"), None), 30, "lab.json")
        run_id = state.parent.name
        if moment == "while it starts":
            # Agents started (their pids recorded), the demo still waits for a leader.
            wait_for(
                lambda: len([k for k in NetLab.load(state.parent).pids if "agent" in k]) == 3,
                30,
                "the agents' pids in lab.json",
                interval=0.005,
            )
        else:
            wait_for(lambda: any(" up in " in line for line in lines), 60, "the demo's lab up")
        footprint = Footprint.from_run_dir(state.parent, veths)
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        took = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    try:
        output = "".join(lines)
        assert code != 0, output
        assert took < 10, f"exited {took:.1f}s after Ctrl-C"
        assert footprint.leftovers() == [], output
    finally:
        remove_labs_under(base, [run_id] if run_id else [])


def test_two_labs_at_once_do_not_collide(tmp_path: Path) -> None:
    base = tmp_path / "base"
    veths = root_veths()
    starts = [
        subprocess.Popen(
            raftlb_lab("up", "--base", str(base), "--backends", "1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    try:
        results = [p.communicate(timeout=90) for p in starts]
        for proc, (out, err) in zip(starts, results, strict=True):
            assert proc.returncode == 0, out + err
        runs = sorted(list_runs(base))
        assert len(runs) == 2 and runs[0] != runs[1], runs
        labs = [NetLab.find(run, base) for run in runs]
        footprints = [Footprint.of(lab, veths) for lab in labs]
        assert not set(labs[0].plan.namespaces()) & set(labs[1].plan.namespaces())
        for lab in labs:
            leader = wait_for(partial(agreed_leader, lab, lab.node_names()), 15, "a leader")
            assert leader in lab.node_names()
            # Same addresses in both labs: each client must reach its own lab's hosts.
            b1 = lab.plan.host("b1")
            for host in ("b1", "n1", "n2", "n3"):
                target = lab.plan.host(host).ipv4
                assert ping(lab, "client", target).returncode == 0, f"{lab.run_id}: {host}"
            neigh = lab.exec(
                "client", ["ip", "neigh", "show", str(b1.ipv4)], capture_output=True, text=True
            )
            assert b1.interfaces[0].mac in neigh.stdout, neigh.stdout
        for lab in labs:
            down = subprocess.run(
                raftlb_lab("down", "--base", str(base), lab.run_id),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd=REPO,
            )
            assert down.returncode == 0, down.stdout + down.stderr
        for footprint in footprints:
            assert footprint.leftovers() == []
    finally:
        for proc in starts:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        remove_labs_under(base)
