"""The agent refuses to start, with a message saying what to fix, instead of running half-broken."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from appliance import agent
from appliance.agent import AgentStartError, check_runtime, raft_settings
from appliance.cli.main import cli
from appliance.config import parse_config


def _config(tmp_path: Path, port: int, data_dir: Path | None = None) -> dict[str, object]:
    (tmp_path / "pw").write_text("p" * 32)
    (tmp_path / "tok").write_text("t" * 32)
    return {
        "node_id": "n1",
        "raft": {
            "address": f"127.0.0.1:{port}",
            "peers": [{"id": "n1", "address": f"127.0.0.1:{port}"}],
            "password_file": str(tmp_path / "pw"),
        },
        "data_dir": str(data_dir or tmp_path / "data"),
        "api": {"listen": "127.0.0.1:1", "token_file": str(tmp_path / "tok")},
        "forward": "none",  # never touch the host's nftables or sysctls
    }


def test_raft_port_held_by_another_process_is_refused(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = parse_config(_config(tmp_path, port))
        with pytest.raises(AgentStartError, match=rf"raft.address 127.0.0.1:{port}: .*in use"):
            check_runtime(config, raft_settings(config))


def test_unwritable_data_dir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = parse_config(_config(tmp_path, 1, data_dir=blocker / "data"))
    with pytest.raises(AgentStartError, match=r"data_dir .*file/data"):
        check_runtime(config, raft_settings(config))


def test_free_port_and_writable_dir_pass(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = parse_config(_config(tmp_path, port))
    check_runtime(config, raft_settings(config))
    assert (tmp_path / "data" / "raft").is_dir()


def test_agent_without_password_file_exits_1_naming_the_field(tmp_path: Path) -> None:
    data = _config(tmp_path, 7001)
    (tmp_path / "pw").unlink()
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["agent", "--config", str(path)])
    assert result.exit_code == 1
    assert "raft.password_file" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_agent_with_invalid_config_exits_2(tmp_path: Path) -> None:
    data = _config(tmp_path, 7001)
    data["node_id"] = "Not Valid"
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["agent", "--config", str(path)])
    assert result.exit_code == 2
    assert "node_id" in result.stderr


async def test_the_api_accept_queue_is_deepened_beyond_asyncios_100() -> None:
    # A flood of connections overflowed asyncio's queue of 100 and a legitimate client's SYN
    # was dropped (resent after 1 and 3 s); asyncio still accepts at most 100 per turn.
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]

        def queue() -> int:
            out = subprocess.run(
                ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
            ).stdout.split()
            return int(out[2])  # State Recv-Q Send-Q: Send-Q is the backlog of a listener

        assert queue() == 100
        agent._deepen_accept_queue(server.sockets)
        assert queue() == agent.API_BACKLOG
    finally:
        server.close()
