"""The nftables renderer: golden output, and the choices behind it."""

from __future__ import annotations

import ipaddress
import os
import re
from fractions import Fraction
from pathlib import Path

import pytest

from appliance.dataplane.firewall import Firewall
from appliance.dataplane.forwards import Forward, Policy, Target, forwards
from appliance.dataplane.render import CHUNK, chain_name, render, render_delta, shard_table
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
    # The smallest table size keeps the golden file readable; VIP-sourced like an l2 pool.
    text = render(forwards(SERVICES, HELD, policy=lambda _: Policy(size=251, snat=True)))
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


def test_weights_give_each_backend_its_share_of_new_connections() -> None:
    """One rule per backend, each a fresh draw among the weight left: backend i is taken with
    probability weight_i / total (computed exactly from the rendered rules)."""
    weights = [3, 1, 5, 1, 2]
    targets = tuple(Target(ip(f"192.0.2.{i + 1}"), 80, w) for i, w in enumerate(weights))
    text = render([Forward(ip("192.0.2.9"), "tcp", 80, targets)])
    rules = [line.strip() for line in text.splitlines() if "dnat ip to" in line]
    assert len(rules) == len(weights)
    share, left = {}, Fraction(1)
    for rule in rules:
        found = re.search(r"numgen random mod (\d+) < (\d+) ", rule)
        p = Fraction(int(found[2]), int(found[1])) if found else Fraction(1)
        share[rule.split("dnat ip to ")[1].split()[0]] = left * p
        left *= 1 - p
    assert share == {
        f"192.0.2.{i + 1}:80": Fraction(w, sum(weights)) for i, w in enumerate(weights)
    }


def test_many_backends_use_one_map_with_weight_ranges() -> None:
    targets = tuple(Target(ip(f"192.0.2.{i + 1}"), 80, 2 if i == 0 else 1) for i in range(20))
    (rule,) = [
        line
        for line in render([Forward(ip("192.0.2.99"), "tcp", 80, targets)]).splitlines()
        if "dnat ip to" in line
    ]
    assert "numgen random mod 21 map { 0-1 : 192.0.2.1 . 80, 2 : 192.0.2.2 . 80," in rule


def test_affinity_hashes_the_client_address_with_the_same_seed_on_every_node() -> None:
    targets = (Target(ip("192.0.2.1"), 80, 2), Target(ip("192.0.2.2"), 80))
    forward = Forward(ip("192.0.2.9"), "tcp", 80, targets, affinity=True)
    first, second = render([forward]), render([forward])
    rules = [line.strip() for line in first.splitlines() if "dnat ip to" in line]
    seed = re.search(r"seed (0x[0-9a-f]+) ", rules[0])[1]
    assert rules == [
        f'meta l4proto tcp jhash ip saddr mod 3 seed {seed} 0-1 dnat ip to 192.0.2.1:80 comment ""',
        'meta l4proto tcp dnat ip to 192.0.2.2:80 comment ""',
    ]
    assert first == second


@pytest.mark.parametrize("service_id", ['a"b', "a\\b", "a\nb"])
def test_comments_never_break_out_of_their_quotes(service_id: str) -> None:
    forward = Forward(ip("192.0.2.9"), "tcp", 80, (), service=service_id)
    line = next(line for line in render([forward]).splitlines() if "no healthy backend" in line)
    assert line.count('"') == 2
    delta = render_delta({}, {forward.vip: (forward,)})
    assert next(line for line in delta.splitlines() if "comment" in line).count('"') == 2


def test_firewall_lets_peers_reach_raft_and_heartbeats_and_peers_plus_allowed_reach_the_api() -> (
    None
):
    fw = Firewall(
        raft_port=7001,
        api_port=8080,
        peers=(ip("192.0.2.11"), ip("2001:db8:1::b")),
        api_clients=(ipaddress.ip_network("203.0.113.0/24"),),
    )
    lines = [line.strip() for line in render([], firewall=fw).splitlines()]
    assert lines[lines.index("chain input {") :][2:12] == [
        'iif "lo" accept',
        "tcp dport 7001 ip saddr { 192.0.2.11 } accept",
        "tcp dport 7001 ip6 saddr { 2001:db8:1::b } accept",
        'tcp dport 7001 reject with tcp reset comment "raft: peers only"',
        "udp dport 7001 ip saddr { 192.0.2.11 } accept",
        "udp dport 7001 ip6 saddr { 2001:db8:1::b } accept",
        'udp dport 7001 drop comment "lease heartbeats: peers only"',
        "tcp dport 8080 ip saddr { 192.0.2.11, 203.0.113.0/24 } accept",
        "tcp dport 8080 ip6 saddr { 2001:db8:1::b } accept",
        'tcp dport 8080 reject with tcp reset comment "api: peers and api.allow"',
    ]
    open_api = render([], firewall=Firewall(7001, 8080, (ip("192.0.2.11"),)))
    assert "dport 8080" not in open_api and "dport 7001" in open_api
    assert "chain input" not in render([])


# -- deltas: one service among many ---------------------------------------------------------------


def many(
    count: int, backends: int = 2
) -> dict[ipaddress.IPv4Address | ipaddress.IPv6Address, tuple[Forward, ...]]:
    out = {}
    for i in range(count):
        vip = ip("2001:db8:100::") + i
        targets = tuple(Target(ip("2001:db8:2::") + b, 30000 + i) for b in range(1, backends + 1))
        out[vip] = (Forward(vip, "tcp", 80, targets, service=f"k/ns/s{i}"),)
    return out


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("RAFTLB_UPDATE_GOLDEN") == "1":  # regenerate, then review the diff
        path.write_text(text)
    assert text == path.read_text()


def test_golden_delta_adding_one_service_among_many() -> None:
    current = many(500)
    vip = ip("2001:db8:100::") + 500
    web = Forward(vip, "tcp", 80, (Target(ip("2001:db8:2::1"), 30080),), service="k/ns/new")
    dns = Forward(vip, "udp", 53, (), service="k/ns/new")
    golden("delta-add.nft", render_delta(current, {vip: (web, dns)}))


def test_golden_delta_changing_one_service_among_many() -> None:
    current = many(500)
    vip = ip("2001:db8:100::") + 7
    (old,) = current[vip]
    changed = Forward(vip, "tcp", 80, old.targets[:1], affinity=True, service=old.service)
    added_port = Forward(vip, "tcp", 443, old.targets, service=old.service)
    golden("delta-change.nft", render_delta(current, {vip: (changed, added_port)}))


def test_golden_delta_removing_one_service_among_many() -> None:
    current = many(500)
    golden("delta-remove.nft", render_delta(current, {ip("2001:db8:100::") + 9: ()}))


def test_a_delta_names_only_the_vips_that_changed() -> None:
    current = many(2000)
    vip = ip("2001:db8:100::") + 1234
    (old,) = current[vip]
    moved = Forward(vip, "tcp", 80, old.targets[1:], service=old.service)
    text = render_delta(current, {vip: (moved,), **{v: current[v] for v in list(current)[:50]}})
    assert text.splitlines() == [
        f"flush chain inet {shard_table(vip)} {chain_name(old)}",
        f"add rule inet {shard_table(vip)} {chain_name(old)} meta l4proto tcp "
        'dnat ip6 to [2001:db8:2::2]:31234 comment "k/ns/s1234"',
    ]
    assert render_delta(current, {vip: current[vip]}) == ""  # nothing differs: no transaction


def test_elements_go_in_chunks() -> None:
    text = render([f for fs in many(2 * CHUNK + 5, backends=1).values() for f in fs])
    adds = [line for line in text.splitlines() if line.startswith("add element inet raftlb_")]
    assert sum(line.count(" : goto ") for line in adds) == 2 * CHUNK + 5
    assert max(line.count(" : goto ") for line in adds) <= CHUNK
    vips = [line for line in text.splitlines() if line.startswith("add element inet raftlb vips6")]
    assert [line.count(",") + 1 for line in vips] == [CHUNK, CHUNK, 5]
