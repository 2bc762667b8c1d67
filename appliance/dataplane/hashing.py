"""The nftables side of consistent hashing (pure): lookup tables shared between VIP ports.

A consistent VIP port (`Forward.hashing`) is picked up by the main table's `hash` chain
(prerouting, just before the shards' DNAT, new connections only), which jumps through the
`hashed4`/`hashed6` verdict maps to the chain of the port's *members*:

    chain h-<tag> {                                  # one per (members, healthy, size, seed)
        meta mark set jhash ip saddr . th sport mod 4093 seed 0x72616c62 map @t-<members>
        meta mark set jhash ip6 saddr . th sport mod 4093 seed 0x72616c62 map @t-<members>
        meta mark { 3 } meta mark set jhash ... map @t-<healthy>   # when backend 3 is down
    }

The packet mark then carries the backend id to the VIP port's chain in its shard, which DNATs
`meta mark <id>` to that backend's address. A table (`t-<tag>`, slot -> id, `size` elements)
depends only on the backends' ids and weights (appliance/dataplane/consistent.py), so ports
that were never changed share one, and so do their chains.

A backend that is down keeps its slots in the table over all members: a flow whose backend is
up never moves because another one went down (or because two nodes disagree for a moment on a
third backend's health). Flows whose backend is down take the table over the healthy members,
which differs from the full one in the dead backends' slots and little else; when the backend
comes back, its new flows return to it (established ones stay where conntrack put them, but a
connection moved to a stand-in is lost if the VIP also changes node before it ends).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from appliance.dataplane import consistent

Members = tuple[tuple[int, int], ...]  # (backend id, weight), sorted by id


@dataclass(frozen=True, slots=True)
class Hashing:
    """Consistent hashing of one VIP port: the table over every configured backend of the
    VIP's family (`members`, whatever their health), its size and the flow hash's seed."""

    members: Members
    size: int = consistent.DEFAULT_SIZE
    seed: int = 0x72616C62


def _tag(*parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=6).hexdigest()


def table_name(members: Members, size: int) -> str:
    return f"t-{_tag(consistent.normalized(members), size)}"


@dataclass(frozen=True, slots=True)
class Chain:
    """The hash chain a VIP port jumps to, and the tables it reads."""

    hashing: Hashing
    healthy: Members  # the members that are up (at least two: one alone needs no hash)

    @property
    def name(self) -> str:
        h = self.hashing
        return f"h-{_tag(h.members, self.healthy, h.size, h.seed)}"

    def tables(self) -> list[tuple[str, Members]]:
        out = [(table_name(self.hashing.members, self.hashing.size), self.hashing.members)]
        if self.healthy != self.hashing.members:
            out.append((table_name(self.healthy, self.hashing.size), self.healthy))
        return out

    def rules(self) -> list[str]:
        h = self.hashing
        tables = self.tables()
        full, healthy = tables[0][0], tables[-1][0]
        lines = [
            f"meta mark set jhash {family} saddr . th sport mod {h.size} seed {h.seed:#x} "
            f"map @{full}"
            for family in ("ip", "ip6")
        ]
        dead = sorted({m for m, _ in h.members} - {m for m, _ in self.healthy})
        if dead:
            down = ", ".join(map(str, dead))
            lines += [
                f"meta mark {{ {down} }} meta mark set jhash {family} saddr . th sport "
                f"mod {h.size} seed {h.seed:#x} map @{healthy}"
                for family in ("ip", "ip6")
            ]
        return lines


def table_lines(name: str) -> list[str]:
    """The declaration of one lookup table (its elements come separately, in chunks)."""
    return [f"\tmap {name} {{", "\t\ttypeof numgen inc mod 2 : meta mark", "\t}"]


def table_elements(members: Members, size: int) -> list[str]:
    """`slot : id` for every slot of the table."""
    return [f"{slot} : {member}" for slot, member in enumerate(consistent.table(members, size))]


Uses = Mapping[str, int]


def uses_of(chains: Iterable[Chain]) -> Counter[str]:
    """How many VIP ports use each chain and table (by name)."""
    counts: Counter[str] = Counter()
    for chain in chains:
        counts[chain.name] += 1
        for name, _ in chain.tables():
            counts[name] += 1
    return counts
