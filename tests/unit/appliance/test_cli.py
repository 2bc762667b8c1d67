"""The `raftlb` commands against the real aiohttp app and the fake cluster, served by a thread."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from appliance.cli.main import cli
from appliance.lab.served import ServedApp
from raft.cluster import SubmitError
from tests.support.agentapi import TOKEN, serve
from tests.support.fake_cluster import InMemoryCluster

POOLS_YAML = """\
- name: web
  addresses: [192.0.2.10-192.0.2.12]
  default: true
"""
SERVICES_YAML = """\
services:
  - id: prod/default/web
    ports:
      - port: 80
        name: http
        backends:
          - {address: 198.51.100.1, port: 30080, node: k8s-1}
          - {address: 198.51.100.2, port: 30080, weight: 3}
      - port: 443
  - id: prod/default/dns
    sharing_key: "[red]shared"
    ports: [{port: 53, protocol: udp}]
"""


@pytest.fixture
def cluster() -> InMemoryCluster:
    return InMemoryCluster("n1", {"n1": "127.0.0.1:7001"})


@pytest.fixture
def server(cluster: InMemoryCluster) -> Iterator[ServedApp]:
    with serve(cluster, version="9.9.9") as served:
        yield served


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "api.token"
    path.write_text(TOKEN + "\n")
    return path


Run = Callable[..., Result]


@pytest.fixture
def raftlb(server: ServedApp, token_file: Path) -> Run:
    """Run `raftlb --api URL --token-file FILE ARGS...` against the served app."""

    def run(*args: str, api: str | None = None, env: dict[str, str] | None = None) -> Result:
        runner = CliRunner(env={"RAFTLB_API": None, "RAFTLB_TOKEN_FILE": None, **(env or {})})
        argv = ["--api", api or server.url, "--token-file", str(token_file), *args]
        return runner.invoke(cli, argv, catch_exceptions=False)

    return run


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def lines(text: str) -> list[str]:
    """Output lines with runs of spaces squeezed, for matching table rows."""
    return [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()]


@pytest.fixture
def populated(raftlb: Run, tmp_path: Path) -> None:
    assert raftlb("pools", "apply", "-f", write(tmp_path, "p.yaml", POOLS_YAML)).exit_code == 0
    assert (
        raftlb("services", "apply", "-f", write(tmp_path, "s.yaml", SERVICES_YAML)).exit_code == 0
    )


# -- status and nodes -------------------------------------------------------------------------


def test_status(raftlb: Run, populated: None) -> None:
    result = raftlb("status")
    assert result.exit_code == 0, result.stderr
    out = lines(result.stdout)
    for expected in [
        "node n1 (version 9.9.9)",
        "role leader",
        "leader n1",
        "term 1",
        "commit index 2 (applied here: 2)",
        "quorum yes",
        "members 1/1 connected",
        "pools 1",
        "services 2",
        "allocations 2",
        "vips 2",
    ]:
        assert expected in out
    assert result.stderr == ""


def test_status_json(raftlb: Run, populated: None) -> None:
    result = raftlb("--json", "status")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["raft"]["role"] == "leader"
    assert (data["pools"], data["services"]) == (1, 2)


def test_status_shows_lost_quorum(raftlb: Run, cluster: InMemoryCluster) -> None:
    cluster.has_quorum = False
    result = raftlb("status")
    assert result.exit_code == 0
    out = lines(result.stdout)
    assert "quorum NO: writes fail until a majority of the nodes reach each other" in out
    assert "leader none (no quorum, or an election is running)" in out


def test_nodes(raftlb: Run) -> None:
    result = raftlb("nodes")
    assert result.exit_code == 0
    out = lines(result.stdout)
    assert out[0] == "NODE ROLE CONNECTED LEASE VIPS RAFT ADDRESS API URL VERSION REPORTED"
    assert "n1 leader yes - 0 127.0.0.1:7001 - - -" in out
    assert [n["id"] for n in json.loads(raftlb("--json", "nodes").stdout)] == ["n1"]


def test_drain_and_undrain(raftlb: Run, cluster: InMemoryCluster) -> None:
    cluster.state.apply(
        {
            "v": 1,
            "type": "member.report",
            "report": {
                "node": "n1",
                "raft_address": "127.0.0.1:7001",
                "version": "1",
                "started_at": 1.0,
                "reported_at": 2.0,
            },
        }
    )
    result = raftlb("nodes", "drain", "n1")
    assert result.exit_code == 0, result.output
    assert "n1 drained" in result.stdout
    assert cluster.view().drained == {"n1"}
    assert "(drained)" in raftlb("nodes").stdout
    assert raftlb("nodes", "undrain", "n1").exit_code == 0
    assert cluster.view().drained == set()
    unknown = raftlb("nodes", "drain", "n9")
    assert unknown.exit_code == 1
    assert "not a member" in unknown.stderr


def test_tables_are_plain_and_120_wide_when_piped(raftlb: Run, populated: None) -> None:
    result = raftlb("services", "list", env={"FORCE_COLOR": "1", "COLUMNS": "40"})
    assert result.exit_code == 0
    assert "\x1b[" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 120
    # One row per service: nothing wrapped at 40 columns.
    assert any(line.startswith("prod/default/web ") for line in result.stdout.splitlines())


# -- pools ------------------------------------------------------------------------------------


def test_pools_apply_and_list(raftlb: Run, tmp_path: Path, cluster: InMemoryCluster) -> None:
    path = write(tmp_path, "pools.yaml", POOLS_YAML)
    result = raftlb("pools", "apply", "-f", path)
    assert result.exit_code == 0, result.stderr
    out = lines(result.stdout)
    assert out[0] == f"applied 1 pool(s) from {path}"
    assert "web 192.0.2.10-192.0.2.12 l2 yes no" in out
    assert [c["type"] for c in cluster.applied] == ["batch"]
    listed = raftlb("pools", "list")
    assert listed.exit_code == 0
    assert "web 192.0.2.10-192.0.2.12 l2 yes no 0/3" in lines(listed.stdout)
    assert json.loads(raftlb("--json", "pools", "list").stdout)[0]["name"] == "web"


def test_pools_apply_json_single_object(raftlb: Run, tmp_path: Path) -> None:
    path = write(tmp_path, "pool.json", '{"name": "v6", "addresses": ["2001:db8::/126"]}')
    result = raftlb("--json", "pools", "apply", "-f", path)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["pools"][0]["addresses"] == ["2001:db8::/126"]


def test_pool_conflict_exits_1(raftlb: Run, tmp_path: Path, populated: None) -> None:
    path = write(tmp_path, "overlap.yaml", "{name: other, addresses: [192.0.2.0/24]}")
    result = raftlb("pools", "apply", "-f", path)
    assert result.exit_code == 1
    assert "overlaps" in result.stderr
    assert "(HTTP 409 conflict)" in result.stderr
    assert "nothing was applied" in result.stderr


# -- services ---------------------------------------------------------------------------------


def test_services_apply_prints_addresses(
    raftlb: Run, tmp_path: Path, cluster: InMemoryCluster
) -> None:
    raftlb("pools", "apply", "-f", write(tmp_path, "p.yaml", POOLS_YAML))
    path = write(tmp_path, "s.yaml", SERVICES_YAML)
    result = raftlb("services", "apply", "-f", path)
    assert result.exit_code == 0, result.stderr
    out = lines(result.stdout)
    assert out[0] == f"applied 2 service(s) from {path}"
    assert "prod/default/web 192.0.2.10 80/tcp, 443/tcp 2 web cluster -" in out
    # A sharing key that looks like rich markup prints as written.
    assert "prod/default/dns 192.0.2.11 53/udp 0 web cluster [red]shared" in out
    assert len(cluster.applied) == 2  # the pools file, then the services file: one request each


def test_services_apply_json(raftlb: Run, tmp_path: Path) -> None:
    raftlb("pools", "apply", "-f", write(tmp_path, "p.yaml", POOLS_YAML))
    result = raftlb("--json", "services", "apply", "-f", write(tmp_path, "s.yaml", SERVICES_YAML))
    assert result.exit_code == 0
    services = json.loads(result.stdout)["services"]
    assert [(s["spec"]["id"], s["address"]) for s in services] == [
        ("prod/default/web", "192.0.2.10"),
        ("prod/default/dns", "192.0.2.11"),
    ]


def test_services_list_get_delete(raftlb: Run, populated: None) -> None:
    listed = raftlb("services", "list")
    assert listed.exit_code == 0
    out = lines(listed.stdout)
    assert out[0] == "ID ADDRESS PORTS BACKENDS POOL POLICY SHARING KEY"
    assert out[2:] == [
        "prod/default/dns 192.0.2.11 53/udp 0 web cluster [red]shared",
        "prod/default/web 192.0.2.10 80/tcp, 443/tcp 2 web cluster -",
    ]
    got = raftlb("services", "get", "prod/default/web")
    assert got.exit_code == 0
    out = lines(got.stdout)
    for expected in [
        "id prod/default/web",
        "address 192.0.2.10 (allocated)",
        "pool web",
        "health check tcp connect every 0.5s, timeout 0.25s, rise 2, fall 2",
        "80/tcp http 198.51.100.1:30080 1 k8s-1 -",
        "80/tcp http 198.51.100.2:30080 3 - -",
        "443/tcp - (none) - - -",
    ]:
        assert expected in out
    as_json = json.loads(raftlb("--json", "services", "get", "prod/default/web").stdout)
    assert as_json["address"] == "192.0.2.10"
    deleted = raftlb("services", "delete", "prod/default/web")
    assert deleted.exit_code == 0
    assert deleted.stdout == "deleted service prod/default/web\n"
    assert [s["spec"]["id"] for s in json.loads(raftlb("--json", "services", "list").stdout)] == [
        "prod/default/dns"
    ]


def test_unknown_service_exits_1(raftlb: Run) -> None:
    for args in (("services", "get", "prod/x/y"), ("services", "delete", "prod/x/y")):
        result = raftlb(*args)
        assert result.exit_code == 1
        assert "service 'prod/x/y' does not exist (HTTP 404 not_found)" in result.stderr
        assert result.stdout == ""


def test_vips(raftlb: Run, populated: None) -> None:
    result = raftlb("vips")
    assert result.exit_code == 0
    out = lines(result.stdout)
    assert "192.0.2.10 web l2 prod/default/web 80/tcp, 443/tcp - - - - - -" in out
    assert "192.0.2.11 web l2 prod/default/dns 53/udp [red]shared - - - - -" in out
    data = json.loads(raftlb("--json", "vips").stdout)
    assert [v["address"] for v in data] == ["192.0.2.10", "192.0.2.11"]


# -- apply files: checked locally, nothing sent when bad ----------------------------------------


def test_invalid_file_exits_2_naming_file_field_and_value(
    raftlb: Run, tmp_path: Path, cluster: InMemoryCluster
) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        "services:\n"
        "  - {id: a/ok, ports: [{port: 80}]}\n"
        "  - {id: a/bad, ports: [{port: 70000}], traffic_policy: sideways}\n",
    )
    result = raftlb("services", "apply", "-f", path)
    assert result.exit_code == 2
    assert f"{path}: error: 2 invalid field(s); nothing was sent" in result.stderr
    assert (
        f"{path}: services.1.ports.0.port: Input should be less than or equal to 65535 "
        "(got 70000)" in result.stderr
    )
    assert f"{path}: services.1.traffic_policy: " in result.stderr
    assert "(got 'sideways')" in result.stderr
    assert result.stdout == ""
    assert cluster.applied == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("[]", "the file lists no services"),
        ("services: {id: a/b}", "services: must be a list (got 'mapping')"),
        ("42", "the file holds a int, not services"),
        (
            "- {id: a/b, ports: [{port: 80}]}\n- {id: a/b, ports: [{port: 81}]}\n",
            "1.id: appears twice (also item 0) (got 'a/b')",
        ),
        ("pools: []\nservices: []\n", "pools: use `raftlb pools apply` for pools"),
        ("services: [\n  {id: a/b", "not valid YAML: line 2"),
        ("{id: a/b, ports: [{port: 80, protocol: sctp}]}", "ports.0.protocol: "),
    ],
)
def test_bad_files_exit_2_and_send_nothing(
    raftlb: Run, tmp_path: Path, cluster: InMemoryCluster, text: str, message: str
) -> None:
    result = raftlb("services", "apply", "-f", write(tmp_path, "f.yaml", text))
    assert result.exit_code == 2
    assert message in result.stderr
    assert cluster.applied == []


def test_bad_json_file_exits_2(raftlb: Run, tmp_path: Path) -> None:
    result = raftlb("pools", "apply", "-f", write(tmp_path, "p.json", '{"name": "web",}'))
    assert result.exit_code == 2
    assert "not valid JSON: line 1, column 16" in result.stderr


def test_missing_file_exits_2(raftlb: Run, tmp_path: Path) -> None:
    result = raftlb("services", "apply", "-f", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_invalid_file_with_json_prints_a_json_error(raftlb: Run, tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "{name: Web, addresses: []}")
    result = raftlb("--json", "pools", "apply", "-f", path)
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["file"] == path
    assert {f["field"]: f["value"] for f in error["fields"]} == {"name": "Web", "addresses": []}


def test_dry_run_checks_and_sends_nothing(
    raftlb: Run, tmp_path: Path, cluster: InMemoryCluster
) -> None:
    result = raftlb("services", "apply", "--dry-run", "-f", write(tmp_path, "s", SERVICES_YAML))
    assert result.exit_code == 0
    assert "valid, 2 services (prod/default/web, prod/default/dns); nothing sent" in result.stdout
    assert cluster.applied == []


def test_apply_from_stdin(server: ServedApp, token_file: Path, cluster: InMemoryCluster) -> None:
    runner = CliRunner(env={"RAFTLB_API": server.url, "RAFTLB_TOKEN_FILE": str(token_file)})
    result = runner.invoke(cli, ["pools", "apply", "-f", "-"], input=POOLS_YAML)
    assert result.exit_code == 0, result.stderr
    assert len(cluster.view().pools) == 1


# -- the cluster refuses ----------------------------------------------------------------------


def test_refused_apply_changes_nothing(
    raftlb: Run, tmp_path: Path, cluster: InMemoryCluster
) -> None:
    raftlb("pools", "apply", "-f", write(tmp_path, "p.yaml", POOLS_YAML))
    before = cluster.view()
    outside = (
        "- {id: a/one, ports: [{port: 80}]}\n- {id: a/two, vip: 203.0.113.5, ports: [{port: 80}]}\n"
    )
    result = raftlb("services", "apply", "-f", write(tmp_path, "s.yaml", outside))
    assert result.exit_code == 2  # the agent found it invalid: 422
    assert "address 203.0.113.5 is outside every pool" in result.stderr
    assert "nothing was applied" in result.stderr
    assert cluster.view() == before
    too_many = "\n".join(f"- {{id: a/s{i}, ports: [{{port: 80}}]}}" for i in range(4))
    result = raftlb("services", "apply", "-f", write(tmp_path, "many.yaml", too_many))
    assert result.exit_code == 1  # 409 exhausted
    assert "no free ipv4 address" in result.stderr
    assert cluster.view() == before


def test_no_quorum_exits_1(raftlb: Run, tmp_path: Path, cluster: InMemoryCluster) -> None:
    cluster.has_quorum = False
    result = raftlb("pools", "apply", "-f", write(tmp_path, "p.yaml", POOLS_YAML))
    assert result.exit_code == 1
    assert "(HTTP 503 no_quorum)" in result.stderr
    assert "no quorum" in result.stderr
    assert "retry after 1s" in result.stderr
    assert len(cluster.view().pools) == 0


def test_unconfirmed_apply_exits_1_without_claiming_nothing_changed(
    raftlb: Run, tmp_path: Path, cluster: InMemoryCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def not_confirmed(command: dict[str, Any], timeout: float) -> dict[str, Any]:
        raise SubmitError("timeout", "not committed within 0.05s")

    monkeypatch.setattr(cluster, "submit", not_confirmed)
    result = raftlb("pools", "apply", "-f", write(tmp_path, "p.yaml", POOLS_YAML))
    assert result.exit_code == 1
    assert "(HTTP 503 timeout)" in result.stderr
    assert "may still be applied later" in result.stderr
    assert "nothing was applied" not in result.stderr


def test_no_quorum_with_json_prints_a_json_error(raftlb: Run, cluster: InMemoryCluster) -> None:
    cluster.has_quorum = False
    result = raftlb("--json", "services", "delete", "a/b")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "no_quorum"


# -- reaching the agent -----------------------------------------------------------------------


def test_unreachable_api_exits_1_with_advice(raftlb: Run) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = raftlb("status", api=url)
    assert result.exit_code == 1
    assert f"error: cannot reach {url}: connection refused" in result.stderr
    assert "hint: check --api / RAFTLB_API" in result.stderr


def test_missing_token_file_exits_2(server: ServedApp, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-token"
    result = CliRunner().invoke(cli, ["--api", server.url, "--token-file", str(missing), "nodes"])
    assert result.exit_code == 2
    assert f"error: token file {missing} does not exist" in result.stderr
    assert "--token-file" in result.stderr


def test_no_token_file_given_exits_2(server: ServedApp) -> None:
    runner = CliRunner(env={"RAFTLB_TOKEN_FILE": None})
    result = runner.invoke(cli, ["--api", server.url, "status"])
    assert result.exit_code == 2
    assert "no API token given" in result.stderr
    assert "RAFTLB_TOKEN_FILE" in result.stderr


def test_wrong_token_exits_1(server: ServedApp, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    result = CliRunner().invoke(cli, ["--api", server.url, "--token-file", str(wrong), "vips"])
    assert result.exit_code == 1
    assert "(HTTP 401 unauthorized)" in result.stderr
    assert "token" in result.stderr.splitlines()[-1]


def test_bad_api_url_exits_2(token_file: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--api", "127.0.0.1:8080", "--token-file", str(token_file), "status"]
    )
    assert result.exit_code == 2
    assert "API URL '127.0.0.1:8080' is not an http:// or https:// URL" in result.stderr


def test_env_vars_reach_the_agent(server: ServedApp, token_file: Path) -> None:
    runner = CliRunner(env={"RAFTLB_API": server.url, "RAFTLB_TOKEN_FILE": str(token_file)})
    result = runner.invoke(cli, ["--json", "status"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["node"] == "n1"


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    commands = set(re.findall(r"^  (\S+)", result.stdout.split("Commands:")[1], re.M))
    assert {"agent", "config", "status", "nodes", "pools", "services", "vips", "lab"} <= commands


def test_lab_is_a_command_loaded_only_when_asked_for() -> None:
    # A fresh interpreter: this one imported the lab for the served app.
    code = "import sys, appliance.cli.main; print([m for m in sys.modules if 'appliance.lab' in m])"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"]
    result = CliRunner().invoke(cli, ["lab", "--help"])
    assert result.exit_code == 0, result.output
    assert "local" in result.stdout


def test_without_the_lab_installed_lab_says_where_it_runs(tmp_path: Path) -> None:
    """The appliance image's wheel leaves the lab out: `raftlb lab` explains, the rest works."""
    root = Path(__file__).resolve().parents[3]
    for package in ("appliance", "raft", "announce", "k8s_sync"):
        shutil.copytree(root / package, tmp_path / package, ignore=shutil.ignore_patterns("lab"))
    # The editable install's finder would map appliance.lab back to this tree: left out, as an
    # installation from the image's wheel has none.
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if not "
        "getattr(f, '__module__', '').startswith('__editable__')]; "
        "from appliance.cli.main import main; sys.argv[0] = 'raftlb'; main()"
    )

    def raftlb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
        )

    lab = raftlb("lab", "--help")  # harmless should the lab be found after all
    assert lab.returncode == 1, lab
    assert "the lab is not part of this installation" in lab.stderr
    assert "Traceback" not in lab.stderr
    assert raftlb("--help").returncode == 0
