"""`raftlb config check` asks exabgp itself about the sessions a BGP config makes."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from announce.bgp_config import Peer, Session
from appliance.bgpsession import exabgp_verdict
from appliance.cli.main import cli
from tests.unit.appliance.test_config import base_config


def check(tmp_path: Path, bgp: dict[str, Any]) -> tuple[int, str]:
    data = base_config(tmp_path)
    for name in ("raft.pw", "api.token"):
        (tmp_path / name).write_text("s3cret-s3cret-s3cret-s3cret-40-chars-long\n")
    data["raft"]["password_file"] = str(tmp_path / "raft.pw")
    data["api"]["token_file"] = str(tmp_path / "api.token")
    data.update(announce="bgp", bgp=bgp)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    return result.exit_code, result.output


def test_a_node_with_an_ipv4_and_an_ipv6_peer_is_valid_for_exabgp_too(tmp_path: Path) -> None:
    bgp = {
        "asn": 64512,
        "local_address6": "2001:db8:1::b",
        "peers": [{"address": "192.0.2.1", "asn": 64500}, {"address": "2001:db8:1::1", "asn": 1}],
    }
    code, output = check(tmp_path, bgp)
    assert code == 0, output


def test_a_peer_listed_twice_is_refused(tmp_path: Path) -> None:
    bgp = {"asn": 64512, "peers": [{"address": "192.0.2.1", "asn": n} for n in (1, 2)]}
    code, output = check(tmp_path, bgp)
    assert code == 2 and "bgp.peers.1.address" in output and "twice" in output, output


def test_what_exabgp_refuses_is_said_in_its_words() -> None:
    # A session the config model never makes (its ends of two families), straight to exabgp.
    mixed = (Peer(IPv6Address("2001:db8:1::1"), 1, IPv4Address("192.0.2.11")),)
    said = exabgp_verdict(Session(64512, IPv4Address("192.0.2.11"), mixed))
    assert said is not None and "same family" in said
    fine = (Peer(IPv4Address("192.0.2.1"), 1, IPv4Address("192.0.2.11")),)
    assert exabgp_verdict(Session(64512, IPv4Address("192.0.2.11"), fine)) is None


def test_an_exabgp_that_cannot_be_asked_is_a_warning_not_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check runs before every start of the agent: no exabgp must not mean no agent.
    monkeypatch.setattr("appliance.bgpsession.exabgp_binary", lambda: str(tmp_path / "none"))
    code, output = check(tmp_path, {"asn": 64512, "peers": [{"address": "192.0.2.1", "asn": 1}]})
    assert code == 0 and "not checked by exabgp" in output, output
