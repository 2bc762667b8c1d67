"""The nftables ruleset of one node, rendered from what it serves. Pure: no I/O, golden-tested.

Tables owned by raftlb: `inet raftlb` and its shards `inet raftlb_f00`-`03` (see SHARDS). They are
loaded whole (`render`: at start, or when the kernel's copy can no longer be trusted) and
otherwise changed by delta (`render_delta`): one `nft -f` transaction that names only the VIPs
that changed, so a change to one service among thousands costs what it costs alone, and other
VIPs' forwarding is never touched.

- prerouting (nat, in each shard): a verdict map per family, `VIP . proto . port : goto <chain>`,
  sends a new connection to the chain of its VIP port, which DNATs it to a backend picked by
  `numgen random` (default) or `jhash` of the client address (source affinity), in proportion
  to the backends' weights (see MAP_ABOVE for how). conntrack keeps a connection on the backend
  it got. A port without a healthy backend has a chain with only a counter, so its connections
  are not DNATed.
- forward (filter): traffic still addressed to a VIP was not DNATed (no healthy backend, or a
  port the VIP does not serve) and is rejected at once (TCP reset, ICMP port unreachable)
  instead of timing out or being routed back onto the LAN.
- postrouting (nat): DNATed connections are masqueraded, so backends answer through this node
  (a backend on the client's LAN would otherwise answer the client directly, from the wrong
  address).

Map and set elements go in commands of at most `CHUNK` elements (kube-proxy's known-good size).
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from appliance.model import Affinity, Backend, IPAddress, Service, address_text

TABLE = "raftlb"
COMMENT = "managed by the raftlb agent: changes made by hand are undone"
CHUNK = 1000
# Up to this many backends a VIP port's chain has one rule per backend; above, one rule with
# an anonymous map. nft reads every set, anonymous ones included, before each transaction:
# with one anonymous map per port, a one-service change cost 45-65 ms at 5,000 services (the
# rules-only form: 14-23 ms), and a full load twice as long. A new connection walks the
# rules (weighted random: one draw per rule; affinity: the same hash in each, by range).
MAP_ABOVE = 16
# VIPs' chains are spread over this many tables (by a hash of the VIP), each with its own
# prerouting chain and verdict maps. On every commit that adds a NAT rule the kernel validates
# all it can reach from the table's base chains: a one-service change at 5,000 services x 10
# backends took 25-36 ms with one table, 15-18 ms with 4, 11-20 ms with 16. Each table's base
# chain is a netfilter hook registered at a full load, slow where RCU is (an emulated VM took
# 13.7 s to load 16 empty shards): 4 is the balance.
SHARDS = 4


@dataclass(frozen=True, slots=True)
class Target:
    address: IPAddress
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Forward:
    """One VIP port and the backends its new connections go to (empty: reject)."""

    vip: IPAddress
    protocol: str  # "tcp" or "udp"
    port: int
    targets: tuple[Target, ...]
    affinity: bool = False
    service: str = ""


Healthy = Callable[[str, Backend], bool]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Firewall:
    """The appliance's own ports: Raft only from the peers, the API only from the peers and
    `api_clients` (None: from anywhere). Loopback is always allowed."""

    raft_port: int
    api_port: int
    peers: tuple[IPAddress, ...]
    api_clients: tuple[Network, ...] | None = None


def forwards(
    services: Iterable[Service], held: Iterable[IPAddress], healthy: Healthy | None = None
) -> list[Forward]:
    """The forwards of the services whose VIP this node holds, in a stable order.

    Backends of the other address family than the VIP are left out (NAT cannot cross
    families), as are those `healthy(service_id, backend)` rejects.
    """
    held_set = set(held)
    out = []
    for service in services:
        if service.address not in held_set:
            continue
        spec = service.spec
        for port in spec.ports:
            targets = tuple(
                Target(b.address, b.port, b.weight)
                for b in port.backends
                if b.address.version == service.address.version
                and (healthy is None or healthy(spec.id, b))
            )
            out.append(
                Forward(
                    vip=service.address,
                    protocol=str(port.protocol),
                    port=port.port,
                    targets=targets,
                    affinity=spec.affinity == Affinity.SOURCE,
                    service=spec.id,
                )
            )
    return sorted(out, key=lambda f: (f.vip.version, int(f.vip), f.protocol, f.port))


def _family(address: IPAddress) -> str:
    return "ip" if address.version == 4 else "ip6"


def _quote(text: str) -> str:
    # nft comments are double-quoted strings without escapes: keep them printable and plain.
    return "".join(c if c.isprintable() and c not in '"\\' else "?" for c in text)[:120]


def _to(target: Target) -> str:
    if target.address.version == 6:
        return f"[{address_text(target.address)}]:{target.port}"
    return f"{address_text(target.address)}:{target.port}"


def _pick(forward: Forward, total: int) -> str:
    if forward.affinity:
        # A fixed seed per VIP: every node picks the same backend for a client.
        seed = zlib.crc32(forward.vip.packed) & 0xFFFFFFFF
        return f"jhash {_family(forward.vip)} saddr mod {total} seed {seed:#x}"
    return f"numgen random mod {total}"


def _dnat_map(forward: Forward) -> str:
    """One rule picking through an anonymous map (many backends)."""
    entries = []
    start = 0
    for target in forward.targets:
        end = start + target.weight - 1
        key = str(start) if end == start else f"{start}-{end}"
        entries.append(f"{key} : {address_text(target.address)} . {target.port}")
        start = end + 1
    return f"dnat {_family(forward.vip)} to {_pick(forward, start)} map {{ {', '.join(entries)} }}"


def _dnat_rules(forward: Forward) -> list[str]:
    """One rule per backend (few backends): no anonymous set, see MAP_ABOVE."""
    family = _family(forward.vip)
    total = sum(t.weight for t in forward.targets)
    out, start, remaining = [], 0, total
    for i, target in enumerate(forward.targets):
        last = i == len(forward.targets) - 1
        if last:
            cond = ""
        elif forward.affinity:
            # The same hash in every rule: backend i owns the range of its weight.
            end = start + target.weight - 1
            cond = f"{_pick(forward, total)} {start if end == start else f'{start}-{end}'} "
        else:
            # Weighted random, one draw per rule: pick i with weight_i / (weights left).
            cond = f"numgen random mod {remaining} < {target.weight} "
        out.append(f"{cond}dnat {family} to {_to(target)}")
        start += target.weight
        remaining -= target.weight
    return out


def chain_name(forward: Forward) -> str:
    """The chain of one VIP port: `fwd-<VIP in hex>-<protocol>-<port>`."""
    return f"fwd-{forward.vip.packed.hex()}-{forward.protocol}-{forward.port}"


def _key(forward: Forward) -> str:
    return f"{address_text(forward.vip)} . {forward.protocol} . {forward.port}"


def _map(address: IPAddress) -> str:
    return "fwd4" if address.version == 4 else "fwd6"


def _vips(address: IPAddress) -> str:
    return "vips4" if address.version == 4 else "vips6"


def _rules(forward: Forward) -> list[str]:
    """The rules of a VIP port's chain."""
    comment = f'comment "{_quote(forward.service)}"'
    if not forward.targets:
        # Not DNATed, so rejected in forward; counted here, and named in `nft list`.
        return [f'counter comment "{_quote(forward.service)}: no healthy backend"']
    proto = f"meta l4proto {forward.protocol}"
    if len(forward.targets) > MAP_ABOVE:
        return [f"{proto} {_dnat_map(forward)} {comment}"]
    return [f"{proto} {rule} {comment}" for rule in _dnat_rules(forward)]


def _order(forward: Forward) -> tuple[int, int, str, int]:
    return (forward.vip.version, int(forward.vip), forward.protocol, forward.port)


def _chunks(command: str, items: Sequence[str]) -> list[str]:
    return [
        f"{command} {{ {', '.join(items[i : i + CHUNK])} }}" for i in range(0, len(items), CHUNK)
    ]


def _firewall(fw: Firewall) -> list[str]:
    peers4 = [str(p) for p in fw.peers if p.version == 4]
    peers6 = [str(p) for p in fw.peers if p.version == 6]
    lines = [
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        '\t\tiif "lo" accept',
    ]
    for port, extra in ((fw.raft_port, None), (fw.api_port, fw.api_clients)):
        if port == fw.api_port and extra is None:
            continue  # the API is open to every client
        allowed4 = peers4 + [str(n) for n in extra or () if n.version == 4]
        allowed6 = peers6 + [str(n) for n in extra or () if n.version == 6]
        if allowed4:
            lines.append(f"\t\ttcp dport {port} ip saddr {{ {', '.join(allowed4)} }} accept")
        if allowed6:
            lines.append(f"\t\ttcp dport {port} ip6 saddr {{ {', '.join(allowed6)} }} accept")
        what = "raft: peers only" if port == fw.raft_port else "api: peers and api.allow"
        lines.append(f'\t\ttcp dport {port} reject with tcp reset comment "{what}"')
        if port == fw.raft_port:
            # The lease heartbeats (appliance/heartbeats.py): authenticated, but nobody
            # else's business.
            if peers4:
                lines.append(f"\t\tudp dport {port} ip saddr {{ {', '.join(peers4)} }} accept")
            if peers6:
                lines.append(f"\t\tudp dport {port} ip6 saddr {{ {', '.join(peers6)} }} accept")
            lines.append(f'\t\tudp dport {port} drop comment "lease heartbeats: peers only"')
    return [*lines, "\t}"]


def shard_table(vip: IPAddress, table: str = TABLE) -> str:
    """The table holding a VIP's forwarding chains (see SHARDS)."""
    return f"{table}_f{zlib.crc32(vip.packed) % SHARDS:02d}"


def tables(table: str = TABLE) -> list[str]:
    """Every table of the ruleset: the main one, then the shards."""
    return [table] + [f"{table}_f{i:02d}" for i in range(SHARDS)]


def _replace(table: str, body: list[str]) -> list[str]:
    return [
        # nft 1.0.6 has no `destroy`: declare (a no-op if it exists), delete, then define.
        f"table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        f'\tcomment "{COMMENT}"',
        *body,
        "}",
    ]


def render(
    forward_list: Iterable[Forward], table: str = TABLE, firewall: Firewall | None = None
) -> str:
    """Every table as one `nft -f` file that replaces any previous version atomically."""
    items = sorted(forward_list, key=_order)
    vips = sorted({f.vip for f in items}, key=lambda a: (a.version, int(a)))
    lines = _replace(
        table,
        [
            "\tset vips4 {",
            "\t\ttype ipv4_addr",
            "\t}",
            "\tset vips6 {",
            "\t\ttype ipv6_addr",
            "\t}",
            "\tchain forward {",
            "\t\ttype filter hook forward priority filter; policy accept;",
            "\t\tip daddr @vips4 meta l4proto tcp reject with tcp reset",
            "\t\tip daddr @vips4 reject",
            "\t\tip6 daddr @vips6 meta l4proto tcp reject with tcp reset",
            "\t\tip6 daddr @vips6 reject",
            "\t}",
            *(_firewall(firewall) if firewall is not None else []),
            "\tchain postrouting {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
            "\t\tct status dnat ct original ip daddr @vips4 masquerade",
            "\t\tct status dnat ct original ip6 daddr @vips6 masquerade",
            "\t}",
        ],
    )
    by_shard: dict[str, list[Forward]] = {name: [] for name in tables(table)[1:]}
    for f in items:
        by_shard[shard_table(f.vip, table)].append(f)
    for shard, members in by_shard.items():
        body = [
            "\tmap fwd4 {",
            "\t\ttype ipv4_addr . inet_proto . inet_service : verdict",
            "\t}",
            "\tmap fwd6 {",
            "\t\ttype ipv6_addr . inet_proto . inet_service : verdict",
            "\t}",
            "\tchain prerouting {",
            "\t\ttype nat hook prerouting priority dstnat; policy accept;",
            "\t\tip daddr . meta l4proto . th dport vmap @fwd4",
            "\t\tip6 daddr . meta l4proto . th dport vmap @fwd6",
            "\t}",
        ]
        for f in members:
            body += [f"\tchain {chain_name(f)} {{", *(f"\t\t{r}" for r in _rules(f)), "\t}"]
        lines += _replace(shard, body)
    for family in (4, 6):
        addresses = [address_text(v) for v in vips if v.version == family]
        lines += _chunks(f"add element inet {table} vips{family}", addresses)
    for shard, forwards_of_shard in by_shard.items():
        for family in (4, 6):
            entries = [
                f"{_key(f)} : goto {chain_name(f)}"
                for f in forwards_of_shard
                if f.vip.version == family
            ]
            lines += _chunks(f"add element inet {shard} fwd{family}", entries)
    return "\n".join(lines) + "\n"


ForwardMap = Mapping[IPAddress, tuple[Forward, ...]]


def render_delta(current: ForwardMap, changes: ForwardMap, table: str = TABLE) -> str:
    """The `nft -f` transaction that takes the tables from `current` to `current` updated by
    `changes` (each VIP given there forwards exactly its forwards; none: it is dropped). Empty
    when nothing differs. Only the chains and elements of the changed VIPs are named."""
    adds_chain: list[str] = []
    rules: list[str] = []
    adds_elem: dict[tuple[str, str], list[str]] = {}
    dels_elem: dict[tuple[str, str], list[str]] = {}
    dels_chain: list[str] = []
    for vip in sorted(changes, key=lambda a: (a.version, int(a))):
        old = {(f.protocol, f.port): f for f in current.get(vip, ())}
        new = {(f.protocol, f.port): f for f in changes[vip]}
        if old == new:
            continue
        shard = shard_table(vip, table)
        if new and not old:
            adds_elem.setdefault((table, _vips(vip)), []).append(address_text(vip))
        elif old and not new:
            dels_elem.setdefault((table, _vips(vip)), []).append(address_text(vip))
        for key in sorted(new.keys() | old.keys()):
            before, after = old.get(key), new.get(key)
            if before == after:
                continue
            if after is None:
                assert before is not None
                dels_elem.setdefault((shard, _map(vip)), []).append(_key(before))
                dels_chain.append(f"delete chain inet {shard} {chain_name(before)}")
                continue
            name = chain_name(after)
            if before is None:
                adds_chain.append(f"add chain inet {shard} {name}")
                adds_elem.setdefault((shard, _map(vip)), []).append(f"{_key(after)} : goto {name}")
            else:
                rules.append(f"flush chain inet {shard} {name}")
            rules += [f"add rule inet {shard} {name} {rule}" for rule in _rules(after)]
    lines = [*adds_chain, *rules]
    for (name, kind), items in sorted(adds_elem.items()):
        lines += _chunks(f"add element inet {name} {kind}", items)
    for (name, kind), items in sorted(dels_elem.items()):
        lines += _chunks(f"delete element inet {name} {kind}", items)
    lines += dels_chain
    return "\n".join(lines) + "\n" if lines else ""


def removal(table: str = TABLE) -> str:
    """An `nft -f` file that removes every table of the ruleset whether or not it exists."""
    return "".join(f"table inet {name}\ndelete table inet {name}\n" for name in tables(table))
