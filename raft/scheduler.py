"""Which node owns each VIP: a pure, deterministic function of the cluster's facts.

`schedule(nodes, vips, previous)` returns the new owner of every VIP (None when no node may hold
it). Rules, in order:

1. A VIP may only go to an eligible node: alive (fresh lease), in quorum, not drained, and
   allowed by the VIP's constraints (`ServiceSpec.nodes`; several services sharing a VIP allow
   the intersection).
2. Minimal moves: a VIP stays with its previous owner while that owner is still a candidate.
3. Orphaned VIPs go, one at a time in address order, to the candidate with the lowest load.
4. Rebalance only while it is needed: a VIP moves from node A to candidate B only when A's load
   exceeds what B's would be after the move, so equal-weight nodes end within one VIP of each
   other and a returning node takes just enough VIPs to even out (no flapping).

A *spare* node (the Raft leader, with `vips_on_leader: avoid`) is the last resort: it gets a
VIP only when no other settled node may hold it (before a warming node), and keeps one only as
long as that stays true; its VIPs otherwise move to the others (planned moves), and
rebalancing never moves one onto it.

Load is the VIP count divided by the node's weight (its capacity), then the sum of the VIPs'
weights; ties are broken by a hash of (node, VIP), like MetalLB's layer-2 speaker choice, so
every node computing this reaches the same answer alone and VIPs spread evenly.

Cost: O(N log N) for N VIPs on a fixed number of nodes. Rebalancing keeps, for every pair of
nodes (from, to), a heap of the VIPs on `from` that may go to `to`, ordered as rule 4 ranks
them, so each move is the best of the pairs' heads (it was a scan of every VIP for every move:
1.7 s of CPU for 400 VIPs on one node).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction


@dataclass(frozen=True)
class NodeFacts:
    id: str
    alive: bool = True
    in_quorum: bool = True
    drained: bool = False
    weight: int = 1
    # False while a node warms up (back from a restart): it gets VIPs only when no settled
    # node may take them, and none by rebalancing.
    settled: bool = True
    # The last resort (see the module docstring): holds VIPs only that nobody settled may take.
    spare: bool = False

    @property
    def eligible(self) -> bool:
        return self.alive and self.in_quorum and not self.drained and self.weight > 0


@dataclass(frozen=True)
class VipDemand:
    vip: str  # the address as text; sorted as given (callers pass canonical addresses)
    allowed: frozenset[str] | None = None  # None: any node
    weight: int = 1
    sort_key: tuple[int, int] = field(default=(0, 0), compare=False)


def tie_break(node: str, vip: str) -> int:
    """A stable pseudo-random rank of a node for a VIP (lower wins)."""
    return int.from_bytes(hashlib.sha256(f"{node}|{vip}".encode()).digest()[:8], "big")


Load = tuple[int | Fraction, int | Fraction]


class _Loads:
    def __init__(
        self, nodes: Iterable[NodeFacts], base: Mapping[str, tuple[int, int]] | None = None
    ) -> None:
        self.weight = {n.id: n.weight for n in nodes}
        base = base or {}
        self.count = {n: base.get(n, (0, 0))[0] for n in self.weight}
        self.vip_weight = {n: base.get(n, (0, 0))[1] for n in self.weight}

    def add(self, node: str, demand: VipDemand, sign: int = 1) -> None:
        self.count[node] += sign
        self.vip_weight[node] += sign * demand.weight

    def key(self, node: str, with_demand: VipDemand | None = None) -> Load:
        """(count, VIP weight) per unit of node weight, optionally as if `with_demand` were
        added. Plain ints for weight-1 nodes (exact, and much cheaper than Fractions)."""
        w = self.weight[node]
        extra, extra_weight = (1, with_demand.weight) if with_demand else (0, 0)
        count, vip_weight = self.count[node] + extra, self.vip_weight[node] + extra_weight
        if w == 1:
            return (count, vip_weight)
        return (Fraction(count, w), Fraction(vip_weight, w))


def schedule(
    nodes: Iterable[NodeFacts],
    vips: Iterable[VipDemand],
    previous: Mapping[str, str | None],
    base: Mapping[str, tuple[int, int]] | None = None,
    rebalance: bool = True,
) -> dict[str, str | None]:
    """The owner of every VIP (see the module docstring for the rules).

    `base` adds, per node, the (count, weight) of VIPs not in `vips` that it holds: the leader
    places new VIPs among the others without rescheduling them. `rebalance=False` skips rule 4
    (it needs every VIP in view)."""
    eligible = sorted((n for n in nodes if n.eligible), key=lambda n: n.id)
    all_ids = [n.id for n in eligible]
    ids = frozenset(all_ids)
    settled_ids = [n.id for n in eligible if n.settled and not n.spare]
    spare_ids = [n.id for n in eligible if n.settled and n.spare]
    spare = frozenset(n.id for n in eligible if n.spare)
    demands = sorted(vips, key=lambda d: (d.sort_key, d.vip))
    loads = _Loads(eligible, base)
    owner: dict[str, str | None] = {}

    def choose(pool: list[str], allowed: frozenset[str] | None) -> list[str]:
        return pool if allowed is None else [n for n in pool if n in allowed]

    # Orphans go to settled nodes when one may take them, else to a settled spare, else to
    # any; rebalancing moves only to settled nodes that are not spare.
    options: dict[str, list[str]] = {}
    moves: dict[str, list[str]] = {}
    for d in demands:
        moves[d.vip] = choose(settled_ids, d.allowed)
        options[d.vip] = moves[d.vip] or choose(spare_ids, d.allowed) or choose(all_ids, d.allowed)

    # 2. Keep what can stay.
    for demand in demands:
        prev = previous.get(demand.vip)
        if prev is None or prev not in ids or (prev in spare and moves[demand.vip]):
            continue
        if demand.allowed is None or prev in demand.allowed:
            owner[demand.vip] = prev
            loads.add(prev, demand)
    # 3. Place the orphans.
    for demand in demands:
        if demand.vip in owner:
            continue
        candidates = options[demand.vip]
        if not candidates:
            owner[demand.vip] = None
            continue
        best = min(candidates, key=lambda n: (loads.key(n, demand), tie_break(n, demand.vip)))
        owner[demand.vip] = best
        loads.add(best, demand)
    # 4. Rebalance while a move strictly lowers the most loaded node below its old load.
    if rebalance:
        _Rebalance(owner, {d.vip: d for d in demands}, loads, moves).run(
            len(demands) * max(1, len(eligible))
        )
    return owner


class _Rebalance:
    """Rule 4 with one heap per (from, to) pair of nodes (see the module docstring)."""

    def __init__(
        self,
        owner: dict[str, str | None],
        by_vip: Mapping[str, VipDemand],
        loads: _Loads,
        options: Mapping[str, list[str]],
    ) -> None:
        self.owner, self.by_vip, self.loads, self.options = owner, by_vip, loads, options
        self.heaps: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
        for vip, src in owner.items():
            if src is not None:
                self._push(vip, src)
        for heap in self.heaps.values():
            heapq.heapify(heap)

    def _push(self, vip: str, src: str, keep_heap: bool = False) -> None:
        weight = self.by_vip[vip].weight
        for dst in self.options[vip]:
            if dst == src:
                continue
            entry = (weight, tie_break(dst, vip), vip)
            heap = self.heaps.setdefault((src, dst), [])
            if keep_heap:
                heapq.heappush(heap, entry)
            else:
                heap.append(entry)

    def run(self, limit: int) -> None:
        for _ in range(limit):
            move = self._best_move()
            if move is None:
                return
            vip, src, dst = move
            demand = self.by_vip[vip]
            self.loads.add(src, demand, -1)
            self.loads.add(dst, demand)
            self.owner[vip] = dst
            self._push(vip, dst, keep_heap=True)

    def _best_move(self) -> tuple[str, str, str] | None:
        best: tuple[tuple[Load, Load, int, str], tuple[str, str, str]] | None = None
        src_loads: dict[str, Load] = {}
        for (src, dst), heap in self.heaps.items():
            # Entries of VIPs that moved away since are dropped as they surface.
            while heap and self.owner.get(heap[0][2]) != src:
                heapq.heappop(heap)
            if not heap:
                continue
            _, rank_bits, vip = heap[0]
            src_load = src_loads.get(src) or src_loads.setdefault(src, self.loads.key(src))
            after = self.loads.key(dst, self.by_vip[vip])
            # Each move lowers the sum of squared loads, so rebalancing always ends. The head
            # has the lowest `after` of its pair: if it does not fit, no VIP of the pair does.
            if not after < src_load:
                continue
            # Prefer relieving the most loaded node, then the emptiest target, then the VIP the
            # target ranks best: deterministic whatever the input order.
            rank = ((-src_load[0], -src_load[1]), after, rank_bits, vip)
            if best is None or rank < best[0]:
                best = (rank, (vip, src, dst))
        return best[1] if best else None
