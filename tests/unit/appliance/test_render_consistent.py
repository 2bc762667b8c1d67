"""Consistent hashing in the rendered ruleset: shared lookup tables, the packet mark, dead
backends' stand-ins, the VIP as source address, and deltas that create and delete shared parts
by their use counts."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

from appliance.dataplane import consistent
from appliance.dataplane.forwards import Forward, ForwardMap, Policy, Target, forwards
from appliance.dataplane.hashing import Chain, Hashing, table_name, uses_of
from appliance.dataplane.render import render, render_delta
from appliance.model import Service, ServiceSpec

ip = ipaddress.ip_address
SMALL = Policy(size=251, snat=True)


def service(name: str, vip: str, backends: list[str], **spec: object) -> Service:
    ports = [{"port": 80, "backends": [{"address": b, "port": 8080} for b in backends]}]
    return Service(spec=ServiceSpec(id=name, ports=ports, **spec), address=ip(vip))


def consistent_forward(vip: str, ids: list[int], healthy: list[int] | None = None) -> Forward:
    members = tuple((i, 1) for i in ids)
    up = ids if healthy is None else healthy
    targets = tuple(Target(ip(f"192.0.2.{50 + i}"), 8080, 1, i) for i in up)
    return Forward(ip(vip), "tcp", 80, targets, hashing=Hashing(members, 251), snat=True)


def elements(text: str, name: str) -> dict[int, int]:
    """The `slot : id` elements a ruleset or delta gives a lookup table."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        if line.startswith(f"add element inet raftlb {name} "):
            for slot, member in re.findall(r"(\d+) : (\d+)", line):
                out[int(slot)] = int(member)
    return out


def test_ports_with_the_same_ids_share_one_table_and_one_chain() -> None:
    services = [
        service("c/ns/a", "192.0.2.200", ["192.0.2.51", "192.0.2.52", "192.0.2.53"]),
        service("c/ns/b", "192.0.2.201", ["192.0.2.61", "192.0.2.62", "192.0.2.63"]),
    ]
    found = forwards(services, [s.address for s in services], policy=lambda _: SMALL)
    assert all(f.hashing == Hashing(((0, 1), (1, 1), (2, 1)), 251) for f in found)
    text = render(found)
    name = table_name(((0, 1), (1, 1), (2, 1)), 251)
    assert text.count(f"map {name} {{") == 1
    assert len(re.findall(r"chain h-[0-9a-f]+ \{", text)) == 1
    table = consistent.table([(0, 1), (1, 1), (2, 1)], 251)
    assert elements(text, name) == dict(enumerate(table))
    # Each VIP port jumps to the chain, which leaves the id in the mark for the shard's DNAT.
    assert "192.0.2.200 . tcp . 80 : goto h-" in text and "192.0.2.201 . tcp . 80 : goto h-" in text
    assert "meta mark 1 dnat ip to 192.0.2.52:8080" in text
    assert "meta mark 2 dnat ip to 192.0.2.63:8080" in text
    assert f"meta mark set jhash ip saddr . th sport mod 251 seed 0x72616c62 map @{name}" in text


def test_a_dead_backend_keeps_its_slots_and_its_flows_take_the_healthy_table() -> None:
    services = [service("c/ns/a", "192.0.2.200", ["192.0.2.51", "192.0.2.52", "192.0.2.53"])]
    found = forwards(
        services,
        [ip("192.0.2.200")],
        healthy=lambda _, b: str(b.address) != "192.0.2.52",
        policy=lambda _: SMALL,
    )
    (forward,) = found
    assert forward.hashing is not None and forward.hashing.members == ((0, 1), (1, 1), (2, 1))
    text = render(found)
    full, healthy = table_name(((0, 1), (1, 1), (2, 1)), 251), table_name(((0, 1), (2, 1)), 251)
    fallback = "meta mark { 1 } meta mark set jhash ip saddr . th sport mod 251 seed 0x72616c62"
    assert f"{fallback} map @{healthy}" in text
    assert f"map @{healthy}" in text and f"map @{full}" in text
    assert "meta mark 1 dnat" not in text  # nothing is sent to the dead one
    assert set(elements(text, healthy).values()) == {0, 2}


def test_one_healthy_backend_needs_no_hash_and_other_modes_none_at_all() -> None:
    one = consistent_forward("192.0.2.200", [0, 1, 2], healthy=[2])
    assert one.chain() is None
    text = render([one])
    assert "goto h-" not in text and "dnat ip to 192.0.2.52:8080" in text
    plain = forwards(
        [service("c/ns/r", "192.0.2.200", ["192.0.2.51", "192.0.2.52"], affinity="random")],
        [ip("192.0.2.200")],
    )
    assert plain[0].hashing is None and "numgen random" in render(plain)


def test_the_vip_is_the_source_and_backends_unknown_segments_are_dropped_not_reset() -> None:
    text = render([consistent_forward("192.0.2.200", [0, 1])])
    assert "add element inet raftlb snat4 { 192.0.2.200 }" in text
    lines = [line.strip() for line in text.splitlines()]
    drop = lines.index("ip daddr @snat4 tcp flags & syn == 0 drop")
    assert drop < lines.index("ip daddr @vips4 meta l4proto tcp reject with tcp reset")
    snat = lines.index("ct status dnat ct original ip daddr @snat4 snat ip to ct original ip daddr")
    assert snat < lines.index("ct status dnat ct original ip daddr @vips4 masquerade")
    assert "random" not in text.split("chain postrouting")[1].split("}")[0]  # ports kept
    masq = render([Forward(ip("192.0.2.201"), "tcp", 80, (Target(ip("192.0.2.51"), 80),))])
    assert "add element inet raftlb snat4" not in masq


def apply(
    current: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, tuple[Forward, ...]],
    changes: ForwardMap,
) -> None:
    for vip, wanted in changes.items():
        if wanted:
            current[vip] = tuple(wanted)
        else:
            current.pop(vip, None)


def uses(current: ForwardMap) -> Counter[str]:
    return uses_of(c for fs in current.values() for f in fs if (c := f.chain()) is not None)


def test_deltas_create_shared_parts_once_and_delete_them_with_their_last_user() -> None:
    a, b = (
        consistent_forward("192.0.2.200", [0, 1, 2]),
        consistent_forward("192.0.2.201", [0, 1, 2]),
    )
    chain = a.chain()
    assert isinstance(chain, Chain)
    table = table_name(a.hashing.members, 251) if a.hashing else ""
    current: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, tuple[Forward, ...]] = {}
    first = render_delta(current, {a.vip: (a,)}, uses=uses(current))
    assert f"add map inet raftlb {table} {{ typeof numgen inc mod 2 : meta mark; }}" in first
    assert f"add chain inet raftlb {chain.name}" in first
    assert len(elements(first, table)) == 251
    apply(current, {a.vip: (a,)})
    second = render_delta(current, {b.vip: (b,)}, uses=uses(current))
    assert "add map" not in second and f"add chain inet raftlb {chain.name}" not in second
    assert f"192.0.2.201 . tcp . 80 : goto {chain.name}" in second
    apply(current, {b.vip: (b,)})
    # One backend of b goes down: b gets a chain of its own and a healthy table; a keeps its.
    b_down = consistent_forward("192.0.2.201", [0, 1, 2], healthy=[0, 2])
    third = render_delta(current, {b.vip: (b_down,)}, uses=uses(current))
    down_chain = b_down.chain()
    assert down_chain is not None and down_chain.name != chain.name
    assert "delete element inet raftlb hashed4 { 192.0.2.201 . tcp . 80 }" in third
    assert f"192.0.2.201 . tcp . 80 : goto {down_chain.name}" in third
    assert f"delete chain inet raftlb {chain.name}" not in third  # a still uses it
    assert third.index("delete element inet raftlb hashed4") < third.index(
        "add element inet raftlb hashed4"
    )
    apply(current, {b.vip: (b_down,)})
    # The last users go: their chains and tables are deleted after the elements naming them.
    last = render_delta(current, {a.vip: (), b.vip: ()}, uses=uses(current))
    assert f"delete chain inet raftlb {chain.name}" in last
    assert f"delete chain inet raftlb {down_chain.name}" in last
    assert f"delete map inet raftlb {table}" in last
    assert last.index("delete element inet raftlb hashed4") < last.index(
        "delete chain inet raftlb h-"
    )
    assert last.index("delete chain inet raftlb h-") < last.index("delete map inet raftlb t-")
    assert "delete element inet raftlb snat4 { 192.0.2.200, 192.0.2.201 }" in last
