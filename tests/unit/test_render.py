"""The nftables renderer: golden output, and the choices behind it."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from appliance.dataplane.render import (
    Firewall,
    Forward,
    Target,
    digest_of,
    forwards,
    removal,
    render,
)
from appliance.model import Service, ServiceSpec

GOLDEN = Path(__file__).parent / "golden"
ip = ipaddress.ip_address


def svc(service_id: str, address: str, **spec: object) -> Service:
    return Service(spec=ServiceSpec(id=service_id, **spec), address=ip(address))


SERVICES = [
    svc(
        "k/default/web",
        "192.0.2.200",
        ports=[
            {
                "port": 80,
                "backends": [
                    {"address": "192.0.2.51", "port": 8080, "weight": 3},
                    {"address": "192.0.2.52", "port": 8080},
                    {"address": "2001:db8:1::33", "port": 8080},  # other family: left out
                ],
            },
            {"port": 443, "backends": []},  # nothing to forward to: reject at once
        ],
    ),
    svc(
        "k/default/dns",
        "192.0.2.200",
        sharing_key="dns",
        affinity="source",
        ports=[
            {"port": 53, "protocol": "udp", "backends": [{"address": "192.0.2.51", "port": 53}]}
        ],
    ),
    svc(
        "k/default/web6",
        "2001:db8:1::200",
        ports=[
            {
                "port": 80,
                "backends": [
                    {"address": "2001:db8:1::33", "port": 80},
                    {"address": "2001:db8:1::34", "port": 80},
                ],
            }
        ],
    ),
    svc("k/default/elsewhere", "192.0.2.201", ports=[{"port": 80}]),  # held by another node
]
HELD = [ip("192.0.2.200"), ip("2001:db8:1::200")]


def test_golden_ruleset() -> None:
    text = render(forwards(SERVICES, HELD))
    golden = GOLDEN / "ruleset.nft"
    if os.environ.get("RAFTLB_UPDATE_GOLDEN") == "1":  # regenerate, then review the diff
        golden.write_text(text)
    assert text == golden.read_text()


def test_forwards_only_held_vips_same_family_healthy_backends() -> None:
    found = forwards(SERVICES, HELD, healthy=lambda sid, b: str(b.address) != "192.0.2.52")
    by_port = {(str(f.vip), f.protocol, f.port): f for f in found}
    assert sorted(by_port) == [
        ("192.0.2.200", "tcp", 80),
        ("192.0.2.200", "tcp", 443),
        ("192.0.2.200", "udp", 53),
        ("2001:db8:1::200", "tcp", 80),
    ]
    assert by_port[("192.0.2.200", "tcp", 80)].targets == (Target(ip("192.0.2.51"), 8080, 3),)
    assert by_port[("192.0.2.200", "udp", 53)].affinity
    assert not by_port[("192.0.2.200", "tcp", 443)].targets


def test_weights_are_ranges_of_the_map_keys() -> None:
    forward = Forward(
        ip("192.0.2.9"), "tcp", 80, (Target(ip("192.0.2.1"), 80, 3), Target(ip("192.0.2.2"), 81, 1))
    )
    assert "numgen random mod 4 map { 0-2 : 192.0.2.1 . 80, 3 : 192.0.2.2 . 81 }" in render(
        [forward]
    )


def test_affinity_hashes_the_client_address_with_the_same_seed_on_every_node() -> None:
    forward = Forward(ip("192.0.2.9"), "tcp", 80, (Target(ip("192.0.2.1"), 80),), affinity=True)
    first, second = render([forward]), render([forward])
    assert "jhash ip saddr mod 1 seed 0x" in first
    assert first == second


def test_the_digest_follows_the_rules_and_is_read_back() -> None:
    empty = render([])
    one = render(forwards(SERVICES, HELD[:1]))
    assert digest_of(empty) != digest_of(one)
    assert digest_of(one) == digest_of(render(forwards(SERVICES, HELD[:1])))
    assert digest_of(removal()) is None


@pytest.mark.parametrize("service_id", ['a"b', "a\\b", "a\nb"])
def test_comments_never_break_out_of_their_quotes(service_id: str) -> None:
    forward = Forward(ip("192.0.2.9"), "tcp", 80, (), service=service_id)
    line = next(line for line in render([forward]).splitlines() if "no healthy backend" in line)
    assert line.count('"') == 2


def test_firewall_lets_peers_reach_raft_and_peers_plus_allowed_reach_the_api() -> None:
    fw = Firewall(
        raft_port=7001,
        api_port=8080,
        peers=(ip("192.0.2.11"), ip("2001:db8:1::b")),
        api_clients=(ipaddress.ip_network("203.0.113.0/24"),),
    )
    lines = [line.strip() for line in render([], firewall=fw).splitlines()]
    assert lines[lines.index("chain input {") :][2:9] == [
        'iif "lo" accept',
        "tcp dport 7001 ip saddr { 192.0.2.11 } accept",
        "tcp dport 7001 ip6 saddr { 2001:db8:1::b } accept",
        'tcp dport 7001 reject with tcp reset comment "raft: peers only"',
        "tcp dport 8080 ip saddr { 192.0.2.11, 203.0.113.0/24 } accept",
        "tcp dport 8080 ip6 saddr { 2001:db8:1::b } accept",
        'tcp dport 8080 reject with tcp reset comment "api: peers and api.allow"',
    ]
    open_api = render([], firewall=Firewall(7001, 8080, (ip("192.0.2.11"),)))
    assert "dport 8080" not in open_api and "dport 7001" in open_api
    assert "chain input" not in render([])
