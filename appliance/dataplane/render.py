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

import zlib
from collections import Counter
from collections.abc import Iterable, Sequence

from appliance.dataplane import hashing
from appliance.dataplane.firewall import Firewall, firewall_lines
from appliance.dataplane.forwards import Forward, ForwardMap, Target
from appliance.model import IPAddress, address_text

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


def _dnat_marked(forward: Forward) -> list[str]:
    """DNAT to the backend whose id the hash chain left in the packet mark (hashing.py)."""
    family = _family(forward.vip)
    if len(forward.targets) > MAP_ABOVE:
        entries = (f"{t.id} : {address_text(t.address)} . {t.port}" for t in forward.targets)
        return [f"dnat {family} to meta mark map {{ {', '.join(entries)} }}"]
    return [f"meta mark {t.id} dnat {family} to {_to(t)}" for t in forward.targets]


def _rules(forward: Forward) -> list[str]:
    """The rules of a VIP port's chain."""
    comment = f'comment "{_quote(forward.service)}"'
    if not forward.targets:
        # Not DNATed, so rejected in forward; counted here, and named in `nft list`.
        return [f'counter comment "{_quote(forward.service)}: no healthy backend"']
    proto = f"meta l4proto {forward.protocol}"
    if forward.chain() is not None:
        return [f"{proto} {rule} {comment}" for rule in _dnat_marked(forward)]
    if len(forward.targets) > MAP_ABOVE:
        return [f"{proto} {_dnat_map(forward)} {comment}"]
    return [f"{proto} {rule} {comment}" for rule in _dnat_rules(forward)]


def _hashed(address: IPAddress) -> str:
    return "hashed4" if address.version == 4 else "hashed6"


def _snat(address: IPAddress) -> str:
    return "snat4" if address.version == 4 else "snat6"


def _chains(items: Iterable[Forward]) -> dict[str, hashing.Chain]:
    """The hash chains the forwards use, by name."""
    return {c.name: c for c in (f.chain() for f in items) if c is not None}


def _order(forward: Forward) -> tuple[int, int, str, int]:
    return (forward.vip.version, int(forward.vip), forward.protocol, forward.port)


def _chunks(command: str, items: Sequence[str]) -> list[str]:
    return [
        f"{command} {{ {', '.join(items[i : i + CHUNK])} }}" for i in range(0, len(items), CHUNK)
    ]


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


def _main(firewall: Firewall | None) -> list[str]:
    return [
        "\tset vips4 {",
        "\t\ttype ipv4_addr",
        "\t}",
        "\tset vips6 {",
        "\t\ttype ipv6_addr",
        "\t}",
        # The VIPs whose backends see the VIP as the source (Forward.snat).
        "\tset snat4 {",
        "\t\ttype ipv4_addr",
        "\t}",
        "\tset snat6 {",
        "\t\ttype ipv6_addr",
        "\t}",
        "\tmap hashed4 {",
        "\t\ttype ipv4_addr . inet_proto . inet_service : verdict",
        "\t}",
        "\tmap hashed6 {",
        "\t\ttype ipv6_addr . inet_proto . inet_service : verdict",
        "\t}",
        # Consistent ports: the backend id into the packet mark, before the shards' DNAT.
        "\tchain hash {",
        "\t\ttype filter hook prerouting priority dstnat - 10; policy accept;",
        "\t\tct state new ip daddr . meta l4proto . th dport vmap @hashed4",
        "\t\tct state new ip6 daddr . meta l4proto . th dport vmap @hashed6",
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        # A backend's segment to a VIP-sourced connection this node never saw (the VIP just
        # moved here): dropped, not reset, so the connection lives until the client's next
        # segment is picked up and sent to the same backend.
        "\t\tip daddr @snat4 tcp flags & syn == 0 drop",
        "\t\tip6 daddr @snat6 tcp flags & syn == 0 drop",
        "\t\tip daddr @vips4 meta l4proto tcp reject with tcp reset",
        "\t\tip daddr @vips4 reject",
        "\t\tip6 daddr @vips6 meta l4proto tcp reject with tcp reset",
        "\t\tip6 daddr @vips6 reject",
        "\t}",
        *(firewall_lines(firewall) if firewall is not None else []),
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        # No port flags: the client's source port is kept whenever that tuple is free, so a
        # new owner's translation of a picked-up connection is the old owner's.
        "\t\tct status dnat ct original ip daddr @snat4 snat ip to ct original ip daddr",
        "\t\tct status dnat ct original ip6 daddr @snat6 snat ip6 to ct original ip6 daddr",
        "\t\tct status dnat ct original ip daddr @vips4 masquerade",
        "\t\tct status dnat ct original ip6 daddr @vips6 masquerade",
        "\t}",
    ]


def _lookups(chains: Iterable[hashing.Chain]) -> dict[str, tuple[hashing.Members, int]]:
    """The lookup tables the chains read: name -> (members, size)."""
    return {name: (m, c.hashing.size) for c in chains for name, m in c.tables()}


def render(
    forward_list: Iterable[Forward], table: str = TABLE, firewall: Firewall | None = None
) -> str:
    """Every table as one `nft -f` file that replaces any previous version atomically."""
    items = sorted(forward_list, key=_order)
    vips = sorted({f.vip for f in items}, key=lambda a: (a.version, int(a)))
    chains = _chains(items)
    lookups = _lookups(chains.values())
    body = _main(firewall)
    for name in sorted(lookups):
        body += hashing.table_lines(name)
    for name, chain in sorted(chains.items()):
        body += [f"\tchain {name} {{", *(f"\t\t{r}" for r in chain.rules()), "\t}"]
    lines = _replace(table, body)
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
    for name, (ids, size) in sorted(lookups.items()):
        lines += _chunks(f"add element inet {table} {name}", hashing.table_elements(ids, size))
    for family in (4, 6):
        of_family = [v for v in vips if v.version == family]
        lines += _chunks(
            f"add element inet {table} vips{family}", [address_text(v) for v in of_family]
        )
        snat = sorted({f.vip for f in items if f.snat and f.vip.version == family}, key=int)
        lines += _chunks(f"add element inet {table} snat{family}", [address_text(v) for v in snat])
        hashed = [
            f"{_key(f)} : goto {c.name}"
            for f in items
            if f.vip.version == family and (c := f.chain()) is not None
        ]
        lines += _chunks(f"add element inet {table} hashed{family}", hashed)
    for shard, forwards_of_shard in by_shard.items():
        for family in (4, 6):
            entries = [
                f"{_key(f)} : goto {chain_name(f)}"
                for f in forwards_of_shard
                if f.vip.version == family
            ]
            lines += _chunks(f"add element inet {shard} fwd{family}", entries)
    return "\n".join(lines) + "\n"


def _snat_of(forwards: Iterable[Forward]) -> bool:
    return any(f.snat for f in forwards)


class _Delta:
    """The commands of one delta transaction, gathered VIP by VIP (see `render_delta`)."""

    def __init__(self, table: str, uses: hashing.Uses) -> None:
        self.table = table
        self.before = Counter(uses)
        self.counts = Counter(uses)
        self.adds_chain: list[str] = []
        self.rules: list[str] = []
        self.adds_elem: dict[tuple[str, str], list[str]] = {}
        self.dels_elem: dict[tuple[str, str], list[str]] = {}
        self.dels_chain: list[str] = []
        self.new_chains: dict[str, hashing.Chain] = {}
        self.old_chains: dict[str, hashing.Chain] = {}

    def add(self, where: str, kind: str, item: str) -> None:
        self.adds_elem.setdefault((where, kind), []).append(item)

    def delete(self, where: str, kind: str, item: str) -> None:
        self.dels_elem.setdefault((where, kind), []).append(item)

    def vip(
        self,
        vip: IPAddress,
        old: dict[tuple[str, int], Forward],
        new: dict[tuple[str, int], Forward],
    ) -> None:
        table, text = self.table, address_text(vip)
        if new and not old:
            self.add(table, _vips(vip), text)
        elif old and not new:
            self.delete(table, _vips(vip), text)
        was, snat = _snat_of(old.values()), _snat_of(new.values())
        if was != snat:
            (self.add if snat else self.delete)(table, _snat(vip), text)
        for key in sorted(new.keys() | old.keys()):
            before, after = old.get(key), new.get(key)
            if before != after:
                self.hashed(vip, before, after)
                self.port(vip, before, after)

    def hashed(self, vip: IPAddress, before: Forward | None, after: Forward | None) -> None:
        """The port's `hashed` element, when its hash chain changes."""
        chain_before = before.chain() if before is not None else None
        chain_after = after.chain() if after is not None else None
        if chain_before == chain_after:
            return
        if before is not None and chain_before is not None:
            self.old_chains[chain_before.name] = chain_before
            self.counts.subtract(hashing.uses_of([chain_before]))
            self.delete(self.table, _hashed(vip), _key(before))
        if after is not None and chain_after is not None:
            self.new_chains[chain_after.name] = chain_after
            self.counts.update(hashing.uses_of([chain_after]))
            self.add(self.table, _hashed(vip), f"{_key(after)} : goto {chain_after.name}")

    def port(self, vip: IPAddress, before: Forward | None, after: Forward | None) -> None:
        """The port's chain in its shard, and its `fwd` element."""
        shard = shard_table(vip, self.table)
        if after is None:
            assert before is not None
            self.delete(shard, _map(vip), _key(before))
            self.dels_chain.append(f"delete chain inet {shard} {chain_name(before)}")
            return
        name = chain_name(after)
        if before is None:
            self.adds_chain.append(f"add chain inet {shard} {name}")
            self.add(shard, _map(vip), f"{_key(after)} : goto {name}")
        else:
            self.rules.append(f"flush chain inet {shard} {name}")
        self.rules += [f"add rule inet {shard} {name} {rule}" for rule in _rules(after)]

    def _born(self, name: str) -> bool:
        return self.counts[name] > 0 and self.before[name] <= 0

    def _gone(self, name: str) -> bool:
        return self.counts[name] <= 0 and self.before[name] > 0

    def text(self) -> str:
        table = self.table
        born = {n: c for n, c in self.new_chains.items() if self._born(n)}
        dead = [n for n in self.old_chains if self._gone(n)]
        lookups = {n: v for n, v in _lookups(born.values()).items() if self._born(n)}
        gone = [n for n in _lookups(self.old_chains[n] for n in dead) if self._gone(n)]
        lines: list[str] = []
        for name, (members, size) in sorted(lookups.items()):
            lines.append(f"add map inet {table} {name} {{ typeof numgen inc mod 2 : meta mark; }}")
            elements = hashing.table_elements(members, size)
            lines += _chunks(f"add element inet {table} {name}", elements)
        for name, chain in sorted(born.items()):
            lines.append(f"add chain inet {table} {name}")
            lines += [f"add rule inet {table} {name} {rule}" for rule in chain.rules()]
        lines += [*self.adds_chain, *self.rules]
        # Deletes first: a port whose hash chain changed has its `hashed` element replaced.
        for (name, kind), items in sorted(self.dels_elem.items()):
            lines += _chunks(f"delete element inet {name} {kind}", items)
        for (name, kind), items in sorted(self.adds_elem.items()):
            lines += _chunks(f"add element inet {name} {kind}", items)
        lines += self.dels_chain
        lines += [f"delete chain inet {table} {name}" for name in sorted(dead)]
        lines += [f"delete map inet {table} {name}" for name in sorted(gone)]
        return "\n".join(lines) + "\n" if lines else ""


def render_delta(
    current: ForwardMap,
    changes: ForwardMap,
    table: str = TABLE,
    uses: hashing.Uses | None = None,
) -> str:
    """The `nft -f` transaction that takes the tables from `current` to `current` updated by
    `changes` (each VIP given there forwards exactly its forwards; none: it is dropped). Empty
    when nothing differs. Only the chains and elements of the changed VIPs are named, and the
    hash chains and lookup tables that come into use or fall out of it (`uses`: how many VIP
    ports of `current` use each, `hashing.uses_of`; without it, none is ever deleted)."""
    delta = _Delta(table, uses or {})
    for vip in sorted(changes, key=lambda a: (a.version, int(a))):
        old = {(f.protocol, f.port): f for f in current.get(vip, ())}
        new = {(f.protocol, f.port): f for f in changes[vip]}
        if old != new:
            delta.vip(vip, old, new)
    return delta.text()


def removal(table: str = TABLE) -> str:
    """An `nft -f` file that removes every table of the ruleset whether or not it exists."""
    return "".join(f"table inet {name}\ndelete table inet {name}\n" for name in tables(table))
