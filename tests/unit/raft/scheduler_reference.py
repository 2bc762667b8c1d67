"""The scheduler as it was first written: quadratic, but plainly rule 4 of raft/scheduler.py.
Kept as the executable specification that the heap-based rebalance must agree with."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from typing import Any

from raft.scheduler import NodeFacts, VipDemand, tie_break


class _Loads:
    def __init__(self, nodes: Iterable[NodeFacts]) -> None:
        self.weight = {n.id: n.weight for n in nodes}
        self.count = dict.fromkeys(self.weight, 0)
        self.vip_weight = dict.fromkeys(self.weight, 0)

    def add(self, node: str, demand: VipDemand, sign: int = 1) -> None:
        self.count[node] += sign
        self.vip_weight[node] += sign * demand.weight

    def key(self, node: str, with_demand: VipDemand | None = None) -> tuple[Fraction, Fraction]:
        """(count, VIP weight) per unit of node weight, optionally as if `with_demand` were
        added."""
        w = self.weight[node]
        extra, extra_weight = (1, with_demand.weight) if with_demand else (0, 0)
        return (
            Fraction(self.count[node] + extra, w),
            Fraction(self.vip_weight[node] + extra_weight, w),
        )


def reference_schedule(
    nodes: Iterable[NodeFacts],
    vips: Iterable[VipDemand],
    previous: Mapping[str, str | None],
) -> dict[str, str | None]:
    """The owner of every VIP (see the module docstring for the rules)."""
    eligible = sorted((n for n in nodes if n.eligible), key=lambda n: n.id)
    ids = {n.id for n in eligible}
    demands = sorted(vips, key=lambda d: (d.sort_key, d.vip))
    loads = _Loads(eligible)
    owner: dict[str, str | None] = {}

    def candidates(demand: VipDemand) -> list[str]:
        allowed = ids if demand.allowed is None else ids & demand.allowed
        return sorted(allowed)

    # 2. Keep what can stay.
    for demand in demands:
        prev = previous.get(demand.vip)
        if prev is not None and prev in candidates(demand):
            owner[demand.vip] = prev
            loads.add(prev, demand)
    # 3. Place the orphans.
    for demand in demands:
        if demand.vip in owner:
            continue
        options = candidates(demand)
        if not options:
            owner[demand.vip] = None
            continue
        best = min(options, key=lambda n: (loads.key(n, demand), tie_break(n, demand.vip)))
        owner[demand.vip] = best
        loads.add(best, demand)
    # 4. Rebalance while a move strictly lowers the most loaded node below its old load.
    by_vip = {d.vip: d for d in demands}
    for _ in range(len(demands) * max(1, len(eligible))):
        move = _best_move(owner, by_vip, loads, candidates)
        if move is None:
            break
        vip, src, dst = move
        loads.add(src, by_vip[vip], -1)
        loads.add(dst, by_vip[vip])
        owner[vip] = dst
    return owner


def _best_move(
    owner: Mapping[str, str | None],
    by_vip: Mapping[str, VipDemand],
    loads: _Loads,
    candidates: Callable[[VipDemand], list[str]],
) -> tuple[str, str, str] | None:
    best: tuple[tuple[Any, ...], tuple[str, str, str]] | None = None
    for vip, src in owner.items():
        if src is None:
            continue
        demand = by_vip[vip]
        src_load = loads.key(src)
        for dst in candidates(demand):
            after = loads.key(dst, demand)
            # Each move lowers the sum of squared loads, so rebalancing always ends.
            if dst == src or not after < src_load:
                continue
            # Prefer relieving the most loaded node, then the emptiest target, then the VIP the
            # target ranks best: deterministic whatever the input order.
            rank = ((-src_load[0], -src_load[1]), after, tie_break(dst, vip), vip)
            if best is None or rank < best[0]:
                best = (rank, (vip, src, dst))
    return best[1] if best else None
