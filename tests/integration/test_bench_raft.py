"""`raftlb lab bench raft`: both modes commit through a real 3-node cluster and are measured."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from appliance.cli.main import cli
from appliance.lab.bench_raft import bench_raft, render_raft


def test_bench_measures_plain_and_durable_commits(tmp_path: Path) -> None:
    steps: list[str] = []
    result = bench_raft(tmp_path, rounds=1, commits=20, progress=steps.append)
    assert steps == ["round 1/1: 20 commits, plain", "round 1/1: 20 commits, durable"]
    for mode in ("plain", "durable"):
        assert 0 < result[mode]["p50_ms"] <= result[mode]["p99_ms"]
    assert result["ratio_p50"] > 0
    assert "durable/plain (p50)" in render_raft(result)
    assert list(tmp_path.iterdir()) == []  # the nodes' data dirs are removed


def test_bench_command_prints_json(tmp_path: Path) -> None:
    out = CliRunner().invoke(
        cli,
        [
            "lab",
            "bench",
            "raft",
            "--rounds",
            "1",
            "--commits",
            "10",
            "--dir",
            str(tmp_path),
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    assert '"ratio_p50"' in out.output
