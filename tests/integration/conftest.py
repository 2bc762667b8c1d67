"""Fixtures of the loopback integration tests: a real 3-node cluster of `raftlb agent` processes.

Each test gets its own lab under pytest's tmp_path (fresh ports, secrets and data dirs). The lab
is always torn down, also when the test fails, and teardown fails loudly if any process of the
lab survives it. When a test fails, the tail of every agent log is attached to its report, so a
failing CI run shows what the agents saw. Timing figures the tests measure are printed in the
terminal summary ("raftlb integration timings").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from integration_harness import (
    LOG_TAIL_LINES,
    TIMINGS,
    LabCluster,
    agent_log_tails,
    teardown_lab,
)

from appliance.lab import local

LAB_DIR = pytest.StashKey[Path]()
LAB_PROGRESS = pytest.StashKey[list[str]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item (item.rep_setup/rep_call/rep_teardown) and attach
    the lab's progress and the tail of every agent log to the report of a failed phase."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
    directory = item.stash.get(LAB_DIR, None)
    if report.failed and directory is not None:
        progress = item.stash.get(LAB_PROGRESS, [])
        if progress:
            report.sections.append(("lab progress", "\n".join(progress)))
        for name, text in agent_log_tails(directory):
            report.sections.append((f"agent log {name} (last {LOG_TAIL_LINES} lines)", text))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("raftlb integration timings")
        for line in TIMINGS:
            terminalreporter.write_line(line)


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabCluster]:
    """A fresh 3-node local lab with an elected leader; always torn down."""
    directory = tmp_path / "lab"
    progress: list[str] = []
    request.node.stash[LAB_DIR] = directory
    request.node.stash[LAB_PROGRESS] = progress
    started = time.monotonic()
    marker = request.node.get_closest_marker("raft_settings")
    raft = dict(marker.kwargs) if marker else None
    try:
        lab, leader = local.up(
            directory, nodes=3, timing="fast", progress=progress.append, raft=raft
        )
        startup = time.monotonic() - started
        progress.append(f"lab up in {startup:.3f}s, leader {leader}")
        yield LabCluster(lab, leader, progress, startup)
    finally:
        teardown_lab(directory, progress)
