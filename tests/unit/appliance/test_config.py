"""Unit tests for appliance/config.py: parsing, cross-field checks, files, URLs and summaries."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance import config as config_module
from appliance.config import (
    MIN_SECRET_LENGTH,
    AgentConfig,
    ApiConfig,
    ConfigError,
    PeerConfig,
    check_files,
    check_host,
    firewall,
    load_config,
    parse_config,
    pool_checker,
    segment_errors,
    split_host_port,
    summary,
)
from appliance.model import Pool

GOOD_SECRET = "0123456789abcdef0123456789abcdef"


def base_config(tmp: Path | None = None) -> dict[str, Any]:
    root = tmp or Path("/nonexistent")
    return {
        "node_id": "lb1",
        "raft": {
            "address": "192.0.2.1:7001",
            "peers": [
                {"id": "lb1", "address": "192.0.2.1:7001"},
                {"id": "lb2", "address": "192.0.2.2:7001"},
                {"id": "lb3", "address": "192.0.2.3:7001"},
            ],
            "password_file": str(root / "raft.pw"),
        },
        "data_dir": str(root / "data"),
        "api": {"listen": "0.0.0.0:8080", "token_file": str(root / "api.token")},
    }


def with_changes(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(base_config())
    change(data)
    return data


def errors_of(data: Any) -> list[dict[str, Any]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    assert info.value.path == "test.yaml"
    assert info.value.errors
    assert f"{len(info.value.errors)} error(s)" in str(info.value)
    return info.value.errors


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target: Any = data
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


# -- good configs --------------------------------------------------------------------------------


def test_base_config_parses() -> None:
    config = parse_config(base_config())
    assert isinstance(config, AgentConfig)
    assert config.node_id == "lb1"
    assert config.peer_map() == {
        "lb1": "192.0.2.1:7001",
        "lb2": "192.0.2.2:7001",
        "lb3": "192.0.2.3:7001",
    }
    assert config.timing == "fast"
    assert config.timing_profile().name == "fast"
    assert config.announce == "none"
    assert config.pools == []
    assert config.services == []


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d.update(timing="safe"), id="timing-safe"),
        pytest.param(lambda d: d.update(log_level="debug"), id="log-level"),
        pytest.param(lambda d: d.update(data_interface="eth0"), id="data-interface"),
        pytest.param(lambda d: d.update(data_interface="eth0", announce="l2"), id="l2"),
        pytest.param(
            lambda d: d.update(
                announce="l2+bgp",
                data_interface="eth0",
                bgp={
                    "asn": 64512,
                    "peers": [{"address": "192.0.2.1", "asn": 64500}],
                    "next_hop6": "2001:db8:1::b",
                },
            ),
            id="l2-and-bgp",
        ),
        pytest.param(
            lambda d: d.update(
                data_interface="eth0",
                announce="l2",
                l2={"burst": 5, "repeats": [0.2, 1.5], "refresh_interval": None},
            ),
            id="l2-no-refresh",
        ),
        pytest.param(lambda d: d["raft"].update(bind="0.0.0.0:7001"), id="raft-bind"),
        pytest.param(
            lambda d: d.update(
                pools=[
                    {"name": "v4", "addresses": ["192.0.2.64/26"], "default": True},
                    {"name": "v4b", "addresses": ["198.51.100.0/24"]},
                    {"name": "v6", "addresses": ["2001:db8:1::/64"], "default": True},
                ]
            ),
            id="pools",
        ),
        pytest.param(
            lambda d: d.update(
                services=[
                    {"id": "static/dns", "vip": "203.0.113.53", "ports": [{"port": 53}]},
                    {"id": "static/web", "ports": [{"port": 80}]},
                ]
            ),
            id="services",
        ),
        pytest.param(
            lambda d: d["api"].update(
                tls={"cert_file": "/x/cert.pem", "key_file": "/x/key.pem"},
                url="https://lb.example.test:8443",
            ),
            id="tls",
        ),
        pytest.param(
            lambda d: (
                d["raft"].update(address="[2001:db8::1]:7001"),
                d["raft"]["peers"][0].update(address="[2001:db8::1]:7001"),
            ),
            id="ipv6-raft",
        ),
        pytest.param(lambda d: d["raft"].update(peers=d["raft"]["peers"][:1]), id="one-node"),
    ],
)
def test_good_configs(change: Callable[[dict[str, Any]], None]) -> None:
    data = with_changes(change)
    config = parse_config(data)
    assert config.model_dump(mode="json", exclude_defaults=True).keys() <= data.keys()
    assert len(config.pools) == len(data.get("pools", []))
    assert len(config.services) == len(data.get("services", []))


# -- host:port -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "192.0.2.1:7001",
        "[::1]:7001",
        "[2001:db8::1]:1",
        "[2001:db8::1]:65535",
        "lb1.example.test:7001",
        "localhost:7001",
    ],
)
def test_host_port_good(address: str) -> None:
    assert PeerConfig(id="lb1", address=address).address == address
    data = with_changes(
        lambda d: (
            d["raft"].update(address=address),
            d["raft"]["peers"][0].update(address=address),
        )
    )
    assert parse_config(data).raft.address == address


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("::1:7001", "write IPv6 addresses as [addr]:port"),
        ("2001:db8::1:7001", "write IPv6 addresses as [addr]:port"),
        ("192.0.2.1", "is not host:port"),
        (":7001", "is not host:port"),
        ("192.0.2.1:", "port must be 1-65535"),
        ("192.0.2.1:0", "port must be 1-65535"),
        ("192.0.2.1:65536", "port must be 1-65535"),
        ("192.0.2.1:http", "port must be 1-65535"),
        ("192.0.2.1:-1", "port must be 1-65535"),
        ("[::1:7001", "unbalanced brackets"),
        ("[::1]7001", ""),
        ("[nope]:7001", ""),
        ("[192.0.2.1]:7001", ""),
        ("[]:7001", ""),
    ],
)
def test_host_port_bad(address: str, reason: str) -> None:
    for where in ("raft.address", "raft.peers.1.address", "raft.bind", "api.listen"):
        data = with_changes(lambda d, where=where: set_path(d, where, address))
        errors = errors_of(data)
        assert [e["field"] for e in errors] == [where], errors
        assert errors[0]["value"] == address
        assert reason in errors[0]["message"]


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("192.0.2.1:7001", "192.0.2.1", 7001),
        ("[2001:db8::1]:443", "2001:db8::1", 443),
        ("lb.example.test:1", "lb.example.test", 1),
    ],
)
def test_split_host_port(address: str, host: str, port: int) -> None:
    assert split_host_port(address) == (host, port)


# -- bad configs: field-level --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        (lambda d: d.pop("node_id"), "node_id", None),
        (lambda d: d.update(node_id="LB1"), "node_id", "LB1"),
        (lambda d: d.pop("data_dir"), "data_dir", None),
        (lambda d: d["raft"].pop("password_file"), "raft.password_file", None),
        (lambda d: d["raft"].update(peers=[]), "raft.peers", []),
        (lambda d: d["raft"]["peers"][2].update(id="Lb3"), "raft.peers.2.id", "Lb3"),
        (lambda d: d.update(timing="slow"), "timing", "slow"),
        (lambda d: d.update(announce="ospf"), "announce", "ospf"),
        (lambda d: d.update(announce="bgp"), "bgp", None),
        (
            lambda d: d.update(
                bgp={"asn": 64512, "peers": [{"address": "192.0.2.1", "asn": 1, "hold_time": 2}]}
            ),
            "bgp.peers.0.hold_time",
            2,
        ),
        # exabgp listens on no port: a passive session could never establish.
        (
            lambda d: d.update(
                bgp={"asn": 64512, "peers": [{"address": "192.0.2.1", "asn": 1, "passive": True}]}
            ),
            "bgp.peers.0.passive",
            True,
        ),
        # exabgp refuses its whole config for one session whose ends differ in family.
        (
            lambda d: d.update(
                bgp={
                    "asn": 64512,
                    "peers": [
                        {"address": "192.0.2.1", "asn": 1},
                        {"address": "2001:db8::1", "asn": 1, "local_address": "192.0.2.11"},
                    ],
                }
            ),
            "bgp.peers.1",
            {"address": "2001:db8::1", "asn": 1, "local_address": "192.0.2.11"},
        ),
        (
            lambda d: d.update(
                bgp={
                    "asn": 64512,
                    "peers": [
                        {"address": "192.0.2.1", "asn": 1},
                        {"address": "2001:db8::1", "asn": 1},
                    ],
                }
            ),
            "bgp.peers.1.address",
            "2001:db8::1",
        ),
        (lambda d: d.update(log_level="trace"), "log_level", "trace"),
        (lambda d: d.update(announce="l2"), "data_interface", None),
        (lambda d: d.update(l2={"burst": 0}), "l2.burst", 0),
        (lambda d: d.update(l2={"repeats": [1.0, 0.5]}), "l2.repeats", [1.0, 0.5]),
        (lambda d: d.update(l2={"repeats": [0]}), "l2.repeats.0", 0),
        (lambda d: d.update(l2={"refresh_interval": 0}), "l2.refresh_interval", 0),
        (lambda d: d.update(l2={"garp": True}), "l2.garp", True),
        (lambda d: d.update(data_interface="x" * 16), "data_interface", "x" * 16),
        (lambda d: d["api"].update(write_timeout=0.1), "api.write_timeout", 0.1),
        (lambda d: d["api"].update(tls={"cert_file": "/c"}), "api.tls.key_file", None),
        # Unknown keys, at every level.
        (lambda d: d.update(colour="blue"), "colour", "blue"),
        (lambda d: d["raft"].update(secret="x"), "raft.secret", "x"),
        (lambda d: d["raft"]["peers"][0].update(port=1), "raft.peers.0.port", 1),
        (lambda d: d["api"].update(tls_cert="/c"), "api.tls_cert", "/c"),
        (
            lambda d: d.update(pools=[{"name": "p", "addresses": ["192.0.2.0/28"], "vlan": 3}]),
            "pools.0.vlan",
            3,
        ),
        (
            lambda d: d.update(services=[{"id": "s", "ports": [{"port": 80}], "tls": True}]),
            "services.0.tls",
            True,
        ),
        # Errors inside pools and services.
        (
            lambda d: d.update(pools=[{"name": "p", "addresses": ["192.0.2.1/28"]}]),
            "pools.0.addresses.0",
            "192.0.2.1/28",
        ),
        (
            lambda d: d.update(
                pools=[{"name": "p", "addresses": ["192.0.2.0/28", "192.0.2.4-192.0.2.5"]}]
            ),
            "pools.0.addresses",
            ["192.0.2.0/28", "192.0.2.4-192.0.2.5"],
        ),
        (
            lambda d: d.update(services=[{"id": "s", "ports": [{"port": 70000}]}]),
            "services.0.ports.0.port",
            70000,
        ),
    ],
)
def test_bad_field_names_field_and_value(
    change: Callable[[dict[str, Any]], Any], field: str, value: Any
) -> None:
    errors = errors_of(with_changes(change))
    assert [e["field"] for e in errors] == [field], errors
    if value is not None:
        assert errors[0]["value"] == value
    assert errors[0]["message"]


def test_every_field_error_reported_at_once() -> None:
    def change(d: dict[str, Any]) -> None:
        d.update(node_id="BAD", timing="slow", extra=1)
        d["api"]["listen"] = "::1:80"

    errors = errors_of(with_changes(change))
    assert {e["field"] for e in errors} == {"node_id", "timing", "extra", "api.listen"}


@pytest.mark.parametrize(
    ("data", "value"),
    [([1, 2], "list"), ("just text", "str"), (None, "NoneType"), (42, "int")],
)
def test_non_mapping_config(data: Any, value: str) -> None:
    errors = errors_of(data)
    assert errors == [{"field": "(root)", "value": value, "message": "must be a mapping"}]


# -- bad configs: cross-field --------------------------------------------------------------------

POOL_A = {"name": "a", "addresses": ["192.0.2.0/28"]}
POOL_B_OVERLAP = {"name": "b", "addresses": ["192.0.2.8-192.0.2.20"]}


def _dupe_peer_id(d: dict[str, Any]) -> None:
    d["raft"]["peers"][2]["id"] = "lb2"


def _dupe_peer_address(d: dict[str, Any]) -> None:
    d["raft"]["peers"][2]["address"] = "192.0.2.2:7001"


CROSS_FIELD = [
    # (id, change, field the error is about, bad value, words the message must contain)
    ("node-not-a-peer", lambda d: d.update(node_id="lb9"), "node_id", "lb9", ["'lb9'", "peers"]),
    (
        "raft-address-mismatch",
        lambda d: d["raft"].update(address="192.0.2.9:7001"),
        "raft.address",
        "192.0.2.9:7001",
        ["'192.0.2.9:7001'", "'192.0.2.1:7001'"],
    ),
    ("duplicate-peer-id", _dupe_peer_id, "raft.peers", "lb2", ["peer id", "'lb2'"]),
    (
        "duplicate-peer-address",
        _dupe_peer_address,
        "raft.peers",
        "192.0.2.2:7001",
        ["peer address", "'192.0.2.2:7001'"],
    ),
    (
        "duplicate-pool-name",
        lambda d: d.update(pools=[POOL_A, {"name": "a", "addresses": ["198.51.100.0/28"]}]),
        "pools",
        "a",
        ["'a'", "twice"],
    ),
    (
        "overlapping-pools",
        lambda d: d.update(pools=[POOL_A, POOL_B_OVERLAP]),
        "pools",
        "192.0.2.8-192.0.2.20",
        ["'b'", "overlaps", "192.0.2.8"],
    ),
    (
        "overlapping-pools-v6",
        lambda d: d.update(
            pools=[
                {"name": "a", "addresses": ["2001:db8::/64"]},
                {"name": "b", "addresses": ["198.51.100.0/24"]},
                {"name": "c", "addresses": ["2001:db8::5"]},
            ]
        ),
        "pools",
        "2001:db8::5",
        ["'c'", "overlaps"],
    ),
    (
        "duplicate-service-id",
        lambda d: d.update(
            services=[
                {"id": "s1", "ports": [{"port": 80}]},
                {"id": "s1", "ports": [{"port": 443}]},
            ]
        ),
        "services",
        "s1",
        ["'s1'", "twice"],
    ),
]


@pytest.mark.parametrize(
    ("change", "words"),
    [pytest.param(c[1], c[4], id=c[0]) for c in CROSS_FIELD],
)
def test_cross_field_error_message_names_field_and_value(
    change: Callable[[dict[str, Any]], Any], words: list[str]
) -> None:
    errors = errors_of(with_changes(change))
    assert len(errors) == 1, errors
    for word in words:
        assert word in errors[0]["message"]


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [pytest.param(c[1], c[2], c[3], id=c[0]) for c in CROSS_FIELD],
)
def test_cross_field_error_lists_field_and_value(
    change: Callable[[dict[str, Any]], Any], field: str, value: str
) -> None:
    # ConfigError.errors are structured: `field` is the dotted path of the offending setting and
    # `value` the offending value, not "(root)" and a dump of the whole file.
    errors = errors_of(with_changes(change))
    assert len(errors) == 1, errors
    assert errors[0]["field"].startswith(field), errors
    assert errors[0]["value"] == value, errors


def test_adjacent_pools_and_other_family_do_not_overlap() -> None:
    data = with_changes(
        lambda d: d.update(
            pools=[
                {"name": "a", "addresses": ["192.0.2.0/25"]},
                {"name": "b", "addresses": ["192.0.2.128/25"]},
                {"name": "c", "addresses": ["2001:db8::/64"]},
            ]
        )
    )
    assert [p.name for p in parse_config(data).pools] == ["a", "b", "c"]


def test_every_cross_field_error_reported_at_once() -> None:
    # The module promises every problem at once, so a config with two independent mistakes must
    # report both.
    def change(d: dict[str, Any]) -> None:
        d["node_id"] = "lb9"
        d["services"] = [
            {"id": "s1", "ports": [{"port": 80}]},
            {"id": "s1", "ports": [{"port": 443}]},
        ]

    errors = errors_of(with_changes(change))
    messages = " | ".join(e["message"] for e in errors)
    assert "'lb9'" in messages
    assert "'s1'" in messages


# -- load_config ---------------------------------------------------------------------------------


def test_load_config_good(tmp_path: Path) -> None:
    data = base_config(tmp_path)
    data["pools"] = [{"name": "v4", "addresses": ["203.0.113.0/24"], "default": True}]
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    assert config.raft.password_file == tmp_path / "raft.pw"
    assert config.pools[0].name == "v4"
    assert config.data_dir == tmp_path / "data"


@pytest.mark.parametrize(
    ("text", "field", "value", "message"),
    [
        ("node_id: [unclosed\n", "(file)", "PATH", "not valid YAML"),
        ("a: b: c\n", "(file)", "PATH", "not valid YAML"),
        ("\t- tab\n  bad", "(file)", "PATH", "not valid YAML"),
        ("- 1\n- 2\n", "(root)", "list", "must be a mapping"),
        ("hello\n", "(root)", "str", "must be a mapping"),
        ("", "(root)", "NoneType", "must be a mapping"),
        ("node_id: lb1\n", "raft", None, "Field required"),
    ],
)
def test_load_config_bad(
    tmp_path: Path, text: str, field: str, value: str | None, message: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    errors = info.value.errors
    hits = [e for e in errors if e["field"] == field]
    assert hits, errors
    if value == "PATH":
        assert hits[0]["value"] == str(path)
    elif value is not None:
        assert hits[0]["value"] == value
    assert message in hits[0]["message"]


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    assert info.value.errors == [
        {"field": "(file)", "value": str(path), "message": "No such file or directory"}
    ]


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.errors[0]["field"] == "(file)"
    assert info.value.errors[0]["value"] == str(tmp_path)


# -- check_files ---------------------------------------------------------------------------------


def files_config(tmp_path: Path, tls: bool = False) -> AgentConfig:
    data = base_config(tmp_path)
    if tls:
        data["api"]["tls"] = {
            "cert_file": str(tmp_path / "cert.pem"),
            "key_file": str(tmp_path / "key.pem"),
        }
    return parse_config(data)


@pytest.mark.parametrize(
    ("password", "token", "bad_fields"),
    [
        (GOOD_SECRET, GOOD_SECRET, []),
        ("x" * MIN_SECRET_LENGTH, "y" * MIN_SECRET_LENGTH, []),
        ("x" * (MIN_SECRET_LENGTH - 1), GOOD_SECRET, ["raft.password_file"]),
        (GOOD_SECRET, "short", ["api.token_file"]),
        ("", "", ["raft.password_file", "api.token_file"]),
        # Surrounding whitespace does not count towards the length.
        ("  " + "x" * 15 + "  \n", GOOD_SECRET, ["raft.password_file"]),
        ("\n" + "x" * 16 + "\n", GOOD_SECRET, []),
        (None, GOOD_SECRET, ["raft.password_file"]),
        (GOOD_SECRET, None, ["api.token_file"]),
        (None, None, ["raft.password_file", "api.token_file"]),
    ],
)
def test_check_files_secrets(
    tmp_path: Path, password: str | None, token: str | None, bad_fields: list[str]
) -> None:
    config = files_config(tmp_path)
    for path, content in ((tmp_path / "raft.pw", password), (tmp_path / "api.token", token)):
        if content is not None:
            path.write_text(content)
    errors = check_files(config)
    assert [e["field"] for e in errors] == bad_fields
    by_field = {e["field"]: e for e in errors}
    files = {"raft.password_file": tmp_path / "raft.pw", "api.token_file": tmp_path / "api.token"}
    for field, error in by_field.items():
        assert error["value"] == str(files[field])
        if not files[field].exists():
            assert error["message"] == "the file does not exist"
        elif files[field].read_text().strip():
            assert f"at least {MIN_SECRET_LENGTH} characters" in error["message"]
        else:
            assert error["message"] == "the file is empty"


@pytest.mark.parametrize(
    ("cert", "key", "bad_fields"),
    [
        (True, True, []),
        (False, True, ["api.tls.cert_file"]),
        (True, False, ["api.tls.key_file"]),
        (False, False, ["api.tls.cert_file", "api.tls.key_file"]),
    ],
)
def test_check_files_tls(tmp_path: Path, cert: bool, key: bool, bad_fields: list[str]) -> None:
    (tmp_path / "raft.pw").write_text(GOOD_SECRET)
    (tmp_path / "api.token").write_text(GOOD_SECRET)
    if cert:
        (tmp_path / "cert.pem").write_text("cert")
    if key:
        (tmp_path / "key.pem").write_text("key")
    errors = check_files(files_config(tmp_path, tls=True))
    assert [e["field"] for e in errors] == bad_fields
    for error in errors:
        assert error["message"] == "file not found"
        assert error["value"].startswith(str(tmp_path))


def test_check_files_tls_path_is_directory(tmp_path: Path) -> None:
    (tmp_path / "raft.pw").write_text(GOOD_SECRET)
    (tmp_path / "api.token").write_text(GOOD_SECRET)
    (tmp_path / "cert.pem").mkdir()
    (tmp_path / "key.pem").write_text("key")
    errors = check_files(files_config(tmp_path, tls=True))
    assert [e["field"] for e in errors] == ["api.tls.cert_file"]


def test_check_files_without_tls_ignores_cert_files(tmp_path: Path) -> None:
    (tmp_path / "raft.pw").write_text(GOOD_SECRET)
    (tmp_path / "api.token").write_text(GOOD_SECRET)
    assert check_files(files_config(tmp_path)) == []


# -- ApiConfig.public_url ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "tls", "url", "expected"),
    [
        ("0.0.0.0:8080", False, None, "http://127.0.0.1:8080"),
        ("0.0.0.0:8443", True, None, "https://127.0.0.1:8443"),
        ("[::]:8080", False, None, "http://[::1]:8080"),
        ("[::]:8443", True, None, "https://[::1]:8443"),
        ("192.0.2.5:8080", False, None, "http://192.0.2.5:8080"),
        ("[2001:db8::5]:8080", False, None, "http://[2001:db8::5]:8080"),
        ("[2001:db8::5]:443", True, None, "https://[2001:db8::5]:443"),
        ("lb.example.test:80", False, None, "http://lb.example.test:80"),
        ("0.0.0.0:8080", False, "https://lb.example.test:9000/", "https://lb.example.test:9000"),
        ("0.0.0.0:8080", True, "http://192.0.2.9:1234", "http://192.0.2.9:1234"),
        ("0.0.0.0:8080", False, "https://lb.example.test/api//", "https://lb.example.test/api"),
    ],
)
def test_public_url(listen: str, tls: bool, url: str | None, expected: str) -> None:
    api = ApiConfig(
        listen=listen,
        token_file=Path("/t"),
        tls={"cert_file": "/c", "key_file": "/k"} if tls else None,
        url=url,
    )
    assert api.public_url() == expected


# -- summary -------------------------------------------------------------------------------------


def test_summary_plain() -> None:
    lines = summary(parse_config(base_config()))
    assert lines == [
        "node lb1: raft 192.0.2.1:7001, 3 member(s) (lb1, lb2, lb3)",
        "api 0.0.0.0:8080 (plain HTTP), data dir /nonexistent/data",
        "announce none, forward nftables, timing fast (election 0.15-0.3s)",
        "0 static pool(s), 0 static service(s)",
    ]


def test_summary_tls_safe_pools_services() -> None:
    data = base_config()
    data["timing"] = "safe"
    data["api"]["tls"] = {"cert_file": "/c", "key_file": "/k"}
    data["pools"] = [
        {"name": "a", "addresses": ["192.0.2.0/28"]},
        {"name": "b", "addresses": ["2001:db8::/64"]},
    ]
    data["services"] = [{"id": "s", "ports": [{"port": 80}]}]
    lines = summary(parse_config(data))
    assert lines[1] == "api 0.0.0.0:8080 (TLS), data dir /nonexistent/data"
    assert lines[2] == "announce none, forward nftables, timing safe (election 1-2s)"
    assert lines[3] == "2 static pool(s), 1 static service(s)"


# --- announce: l2 and the data interface's segment ----------------------------------------------


def l2_config(tmp_path: Path, interface: str, pools: list[dict[str, Any]]) -> AgentConfig:
    data = base_config(tmp_path)
    (tmp_path / "raft.pw").write_text(GOOD_SECRET)
    (tmp_path / "api.token").write_text(GOOD_SECRET)
    data.update(announce="l2", data_interface=interface, pools=pools)
    return parse_config(data)


def test_segment_errors_name_each_block_off_the_subnets() -> None:
    networks = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8:1::/64")]
    pools = [
        Pool(name="ok", addresses=["192.0.2.200-192.0.2.250", "2001:db8:1::200"]),
        Pool(name="bad", addresses=["192.0.2.250-192.0.3.5", "198.51.100.0/28", "192.0.2.9"]),
        Pool(name="routed", addresses=["203.0.113.0/24"], announce="bgp"),
    ]
    errors = segment_errors(pools, networks, "eth0")
    assert [(e["field"], e["value"]) for e in errors] == [
        ("pools.1.addresses.0", "192.0.2.250-192.0.3.5"),
        ("pools.1.addresses.1", "198.51.100.0/28"),
    ]
    assert (
        "outside the subnets of data interface eth0 (192.0.2.0/24, 2001:db8:1::/64)"
        in (errors[0]["message"])
    )
    # Without a prefix (PUT /v1/pools/NAME names the pool in the URL), fields start at the pool.
    assert segment_errors(pools[1:2], networks, "eth0", "")[0]["field"] == "addresses.0"


def test_check_host_refuses_a_layer2_pool_off_the_data_interface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loopback interface exists everywhere and needs no root: its real addresses first.
    config = l2_config(tmp_path, "lo", [{"name": "lan", "addresses": ["192.0.2.0/28"]}])
    assert [(e["field"], e["value"]) for e in check_host(config)] == [
        ("pools.0.addresses.0", "192.0.2.0/28")
    ]
    # Loopback addresses are no VIPs: an interface that has the pool's subnet, as `ip addr`
    # would tell (the one narrow thing faked).
    monkeypatch.setattr(
        config_module, "interface_networks", lambda name: [ipaddress.ip_network("192.0.2.0/24")]
    )
    assert check_host(config) == []


def test_check_host_names_a_missing_data_interface(tmp_path: Path) -> None:
    config = l2_config(tmp_path, "nosuchif0", [])
    errors = check_host(config)
    assert [(e["field"], e["value"]) for e in errors] == [("data_interface", "nosuchif0")]
    assert "no interface named 'nosuchif0'" in errors[0]["message"]


def test_pool_checker_only_when_announcing_on_layer2(tmp_path: Path) -> None:
    assert pool_checker(files_config(tmp_path)) is None
    config = l2_config(tmp_path, "lo", [])
    check = pool_checker(config)
    assert check is not None
    bad = Pool(name="lan", addresses=["192.0.2.0/28"])
    assert [e["field"] for e in check([bad], "pools")] == ["pools.0.addresses.0"]


async def test_pool_checker_works_inside_a_running_event_loop(tmp_path: Path) -> None:
    # The API calls it from a request handler; pyroute2's sync API refuses a running loop.
    check = pool_checker(l2_config(tmp_path, "lo", []))
    assert check is not None
    errors = check([Pool(name="lan", addresses=["192.0.2.0/28"])], "pools")
    assert [e["field"] for e in errors] == ["pools.0.addresses.0"]
    assert "outside the subnets of data interface lo" in errors[0]["message"]


def test_firewall_from_the_config() -> None:
    data = base_config()
    data["api"]["allow"] = ["203.0.113.0/24", "2001:db8:3::/64"]
    rules, notes = firewall(parse_config(data))
    assert rules is not None and notes == []
    assert (rules.raft_port, rules.api_port) == (7001, 8080)
    assert [str(p) for p in rules.peers] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert [str(n) for n in rules.api_clients or ()] == ["203.0.113.0/24", "2001:db8:3::/64"]
    open_api, notes = firewall(parse_config(base_config()))
    assert open_api is not None and open_api.api_clients is None
    assert any("api.allow" in note for note in notes)


def test_firewall_is_left_out_when_peers_are_host_names() -> None:
    data = base_config()
    data["raft"]["peers"][1]["address"] = "lb2.example.test:7001"
    rules, notes = firewall(parse_config(data))
    assert rules is None
    assert any("lb2.example.test" in note for note in notes)


def test_api_allow_must_be_networks() -> None:
    errors = errors_of(with_changes(lambda d: d["api"].update(allow=["192.0.2.1/33"])))
    assert errors[0]["field"] == "api.allow.0"


def test_bfd_needs_bird_and_its_timers_are_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bgp = {"asn": 64512, "peers": [{"address": "192.0.2.1", "asn": 1}], "bfd": {}}
    monkeypatch.setattr("appliance.config.BIRD", tmp_path / "no-bird")
    errors = errors_of(with_changes(lambda d: d.update(bgp=bgp)))
    assert [e["field"] for e in errors] == ["bgp.bfd"], errors
    assert "apt-get install bird2" in errors[0]["message"]
    fast = {**bgp, "bfd": {"interval_ms": 5}}
    assert [e["field"] for e in errors_of(with_changes(lambda d: d.update(bgp=fast)))] == [
        "bgp.bfd.interval_ms"
    ]
