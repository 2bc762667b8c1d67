"""`raftlb lab up/status/exec/down --base DIR` as an operator types them (real processes).

One lab for the module, built by `lab up`; the tests run in file order and the last one removes
it with `lab down`. Whatever happens, the module's base dir is cleaned at the end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.lab.netlab import NetLab
from tests.lab.labkit import Footprint, remove_labs_under, root_veths

pytestmark = pytest.mark.timeout(360)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class CliLab:
    base: Path
    run_id: str
    up: subprocess.CompletedProcess[str]
    veths: set[str]


def raftlb(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


def lab_exec(cli_lab: CliLab, *args: str) -> subprocess.CompletedProcess[str]:
    return raftlb("lab", "exec", "--base", str(cli_lab.base), *args)


@pytest.fixture(scope="module")
def cli_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliLab]:
    base = tmp_path_factory.mktemp("cli")
    veths = root_veths()
    try:
        empty = raftlb("lab", "status", "--base", str(base))
        assert (empty.returncode, empty.stdout.strip()) == (0, f"no lab under {base}")
        up = raftlb("lab", "up", "--base", str(base), timeout=90)
        assert up.returncode == 0, up.stdout + up.stderr
        found = re.search(r"^run id:\s+([0-9a-f]{6})\b", up.stdout, re.M)
        assert found, up.stdout
        yield CliLab(base, found.group(1), up, veths)
    finally:
        remove_labs_under(base)


def test_up_describes_the_lab(cli_lab: CliLab) -> None:
    run, out, err = cli_lab.run_id, cli_lab.up.stdout, cli_lab.up.stderr
    assert f"(run dir {cli_lab.base / run})" in out
    assert f"switch:     rlb-{run}-switch (bridge br0)" in out
    for host, address in [("n1", "192.0.2.11"), ("b2", "192.0.2.52"), ("client", "192.0.2.100")]:
        assert re.search(rf"^{host}\s+rlb-{run}-{host}\s+\w+\s+{address} ", out, re.M), host
    assert f"raftlb lab exec {run} client -- raftlb status" in out
    assert f"raftlb lab down {run}" in out
    # Progress goes to stderr, the description to stdout.
    assert re.search(r"^leader n[123] elected", err, re.M), err
    assert "leader" not in out.split("run id:")[0]


def test_status_shows_processes_and_one_leader(cli_lab: CliLab) -> None:
    status = raftlb("lab", "status", "--base", str(cli_lab.base))
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert out.startswith(f"lab {cli_lab.run_id}: 3 node(s), 2 backend(s); run dir "), out
    for key in ("agent-n1", "agent-n2", "agent-n3", "backend-b1", "backend-b2"):
        assert re.search(rf"^  {key}\s+pid \d+\s+running$", out, re.M), key
    nodes = dict(re.findall(r"^  (n[123]): \w+, leader (n[123]), term \d+$", out, re.M))
    assert sorted(nodes) == ["n1", "n2", "n3"], out
    assert len(set(nodes.values())) == 1, out
    named = raftlb("lab", "status", "--base", str(cli_lab.base), cli_lab.run_id)
    assert (named.returncode, named.stdout) == (0, out)


def test_exec_with_the_run_id_as_printed_by_up(cli_lab: CliLab) -> None:
    """`lab up` prints `raftlb lab exec RUN client -- raftlb status`: it must work."""
    result = lab_exec(cli_lab, cli_lab.run_id, "client", "--", "raftlb", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"leader\s+n[123]", result.stdout), result.stdout
    failing = lab_exec(cli_lab, cli_lab.run_id, "client", "--", "sh", "-c", "exit 7")
    assert failing.returncode == 7, failing.stdout + failing.stderr


def test_exec_without_the_run_id_picks_the_only_lab(cli_lab: CliLab) -> None:
    result = lab_exec(cli_lab, "client", "--", "ip", "-br", "addr", "show", "eth0")
    assert result.returncode == 0, result.stderr
    assert "192.0.2.100/24" in result.stdout and "2001:db8:1::64/64" in result.stdout


@pytest.mark.parametrize(("command", "code"), [("true", 0), ("exit 7", 7), ("exit 1", 1)])
def test_exec_propagates_the_commands_exit_code(cli_lab: CliLab, command: str, code: int) -> None:
    result = lab_exec(cli_lab, "client", "--", "sh", "-c", command)
    assert result.returncode == code, result.stdout + result.stderr


def test_exec_runs_inside_the_namespace_with_the_lab_api(cli_lab: CliLab) -> None:
    # A failing raftlb command inside (an API nobody listens on) exits 1 through exec.
    result = lab_exec(
        cli_lab, "n2", "--", "raftlb", "--api", "http://192.0.2.12:9", "--timeout", "1", "status"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    env = lab_exec(cli_lab, "n2", "--", "sh", "-c", 'echo "$RAFTLB_API $RAFTLB_TOKEN_FILE"')
    assert env.stdout.split() == [
        "http://192.0.2.12:8080",
        str(cli_lab.base / cli_lab.run_id / "api-token"),
    ]


def test_exec_names_an_unknown_host(cli_lab: CliLab) -> None:
    result = lab_exec(cli_lab, "nosuchhost", "--", "true")
    assert result.returncode == 2
    assert "no host 'nosuchhost'" in result.stderr


def test_down_removes_everything(cli_lab: CliLab) -> None:
    footprint = Footprint.of(NetLab.find(cli_lab.run_id, cli_lab.base), cli_lab.veths)
    down = raftlb("lab", "down", "--base", str(cli_lab.base), cli_lab.run_id)
    assert down.returncode == 0, down.stderr
    assert f"lab {cli_lab.run_id} removed" in down.stderr
    assert footprint.leftovers() == []
    status = raftlb("lab", "status", "--base", str(cli_lab.base))
    assert status.stdout.strip() == f"no lab under {cli_lab.base}"
    again = raftlb("lab", "down", "--base", str(cli_lab.base), cli_lab.run_id)
    assert again.returncode == 1
    assert f"no lab {cli_lab.run_id!r}" in again.stderr


def test_bench_lab_sees_short_cuts_and_leaves_nothing(tmp_path: Path) -> None:
    veths = root_veths()
    try:
        bench = raftlb("lab", "bench", "lab", "--seconds", "1", "--json", "--base", str(tmp_path))
        assert bench.returncode == 0, bench.stdout + bench.stderr
        result = json.loads(bench.stdout)
        for proto, figures in result["schedule"].items():
            assert figures["failed"] == 0, (proto, figures)
            assert 5 < figures["gap_p50_ms"] < 20, (proto, figures)  # the 10 ms schedule
        for cut in result["cuts"]:
            # Each cut is one outage, at least as long as the cut (the upper bound only catches a
            # prober that stopped: on a loaded machine a cut can be seen late).
            assert len(cut["seen_ms"]) == 1, cut
            assert cut["cut_ms"] - 10 <= cut["seen_ms"][0] <= cut["cut_ms"] + 1500, cut
        assert [p.name for p in tmp_path.iterdir()] == [], "the bench left a run dir"
        assert root_veths() == veths
    finally:
        remove_labs_under(tmp_path)


def test_bench_failover_runs_its_cases_and_never_sees_two_macs(tmp_path: Path) -> None:
    """The command end to end, on the cases it is asked for (link and freeze of an owner are
    tests/lab/test_lab_ownership.py's)."""
    bench = raftlb(
        "lab", "bench", "failover", "--runs", "1", "--case", "kill", "--case", "drain",
        "--json", "--base", str(tmp_path), timeout=300,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
    result = json.loads(bench.stdout)
    summary = result["summary"]
    assert sorted(summary) == ["kill (leader)", "kill (owner)", "planned drain"], sorted(summary)
    for case, figures in summary.items():
        assert figures["two_mac_runs"] == 0, (case, figures)
        assert figures["open_runs"] == 0, (case, figures)  # the client got answers again
        if case.endswith("(leader)"):
            # vips_on_leader: avoid: the leader that died owned none of the VIPs.
            assert all(r["owner"] != r["victim"] for r in result["runs"][case]), case
        else:
            assert figures["no_takeover_runs"] == 0, (case, figures)  # the VIP moved
    assert [p.name for p in tmp_path.iterdir()] == [], "the bench left a run dir"
