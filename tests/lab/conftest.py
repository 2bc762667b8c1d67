"""Fixtures of the namespace-lab tests: real labs (namespaces, agents, backends, BIRD), as root.

Everything under tests/lab is marked `lab` and skipped, with the reason, when not root or when
`ip` is missing; tests marked `needs_bird` also when BIRD is, and tests that ping when `ping`
is. Each lab lives in its own tmp base dir and is always removed, also when the test fails;
teardown fails loudly if anything of the lab survived (namespace, process, veth, run dir,
registry entry). When a test fails, its report carries, for each namespace of its labs,
`ip -br addr`, `ip neigh`, routes and the nft ruleset, and the tail of every log of the run.

`RAFTLB_TEST_KEEP_LOGS=DIR` copies every lab's logs to DIR/<run id> before teardown, passed or
not: a flaky test's 1-in-10 failure can then be read whole (the report has only the tails).

Never `down --all` here: other engineers run labs on the same machine at the same time, so the
tests remove only labs under their own base dirs (labkit.remove_labs_under).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance.lab.netlab import NetLab
from tests.lab.labkit import (
    Footprint,
    MakeLab,
    diagnostics,
    log_tails,
    remove_labs_under,
    root_veths,
)

LAB_TESTS = Path(__file__).parent
LABS = pytest.StashKey[list[NetLab]]()
# Base dirs of the labs this session made: removed at session end whatever happened.
_BASES: set[Path] = set()
KEEP_LOGS = os.environ.get("RAFTLB_TEST_KEEP_LOGS")


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the namespace lab needs root (network namespaces, veth): run tests/lab as root"
    if shutil.which("ip") is None:
        return "the namespace lab needs `ip` (apt-get install iproute2)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_bird: a lab test with --router (BIRD 2)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = skip_reason()
    no_bird = "--router needs BIRD 2 (apt-get install bird2)" if not shutil.which("bird") else ""
    for item in items:
        if LAB_TESTS not in item.path.parents:
            continue
        item.add_marker(pytest.mark.lab)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
        elif no_bird and item.get_closest_marker("needs_bird"):
            item.add_marker(pytest.mark.skip(reason=no_bird))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the network state and log tails of the test's labs to a failed phase's report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for lab in item.stash.get(LABS, []):
            report.sections.extend(diagnostics(lab))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Fixture teardown normally did this; this covers an interrupted session.
    for base in sorted(_BASES):
        remove_labs_under(base)


@contextmanager
def running_lab(base: Path, **options: Any) -> Iterator[NetLab]:
    """NetLab.up under `base`; on exit `down`, then prove nothing of it is left."""
    _BASES.add(base)
    veths = root_veths()
    progress: list[str] = []
    try:
        lab = NetLab.up(base=base, progress=progress.append, **options)
    except BaseException as exc:
        # The failed start kept its logs: put them in the error before they are removed.
        for title, text in log_tails_under(base):
            exc.add_note(f"--- {title}\n{text}")
        exc.add_note("lab progress:\n" + "\n".join(progress))
        remove_labs_under(base)
        raise
    try:
        yield lab
    finally:
        footprint = Footprint.of(lab, veths)  # now: a test may have restarted processes
        if KEEP_LOGS:
            shutil.copytree(lab.dir / "logs", Path(KEEP_LOGS) / lab.run_id, dirs_exist_ok=True)
        try:
            lab.down(progress=progress.append)
            left = footprint.leftovers()  # before the safety net below hides anything
        finally:
            remove_labs_under(base, [lab.run_id])
        assert not left, f"lab {lab.run_id} left behind: {left}"


def log_tails_under(base: Path) -> list[tuple[str, str]]:
    if not base.is_dir():
        return []
    return [section for run_dir in sorted(base.iterdir()) for section in log_tails(run_dir)]


@pytest.fixture(autouse=True)
def _lab_report(request: pytest.FixtureRequest) -> None:
    """Remember the labs a test uses, for the failure report."""
    labs: list[NetLab] = []
    request.node.stash[LABS] = labs
    if "lab" in request.fixturenames:
        labs.append(request.getfixturevalue("lab"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    """A 3-node, 2-backend lab with an elected leader, shared by a module's tests."""
    with running_lab(tmp_path_factory.mktemp("lab"), nodes=3, backends=2) as built:
        yield built


@pytest.fixture
def make_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLab]:
    """A factory of labs for one test (`make_lab(nodes=3, backends=2, router=False)`), each in
    its own base dir; all removed after the test."""
    with ExitStack() as stack:
        count = 0

        def make(**options: Any) -> NetLab:
            nonlocal count
            count += 1
            built = stack.enter_context(running_lab(tmp_path / f"base{count}", **options))
            request.node.stash[LABS].append(built)
            return built

        yield make
