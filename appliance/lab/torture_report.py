"""What a fault campaign (`raftlb lab torture`) saw, computed from its records: pure.

Inputs: the client's numbered neighbour requests and their replies (appliance/lab/neighask.py:
every reply names its request and the MAC that sent it), the faults with their windows, which
node owned which VIP as each fault began, each node's Raft term around each round, and the
moments each agent logged that its lease ended. Outputs, per fault kind: the outage of the
VIPs the fault touched (p50/p90/max: the longest time their requests went unanswered from the
fault until the round settled), the longest silence of any VIP, dual-owner moments (a request
answered by two MACs, or two MACs answering in turn within DUAL_WINDOW), lease lapses on nodes
the fault did not touch (any node, for a CPU hog), and elections (term rises), with those a
fault of the leader explains.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.lab.neighask import Reply, double_answers, reply_runs

KINDS = ("kill9", "freeze", "linkdown", "isolate", "asym", "cpuhog")
# Faults that take the victim away: an election is expected when the victim led.
DEPOSING = frozenset({"kill9", "freeze", "linkdown", "isolate"})
DUAL_WINDOW = 0.2  # A, B, A within this: two MACs answering in turn, not one move


@dataclass(frozen=True)
class Fault:
    """One round: `kind` done to `victim` from `start` to `end` (monotonic; `wall_*` the same
    moments by the wall clock, to match agents' logs), settled again at `settled`."""

    round: int
    kind: str
    victim: str
    role: str  # what the victim was when picked: leader, owner or follower
    start: float
    end: float
    settled: float
    wall_start: float
    wall_settled: float
    owners: Mapping[str, str]  # VIP -> owner when the fault began
    terms_before: Mapping[str, int]
    terms_after: Mapping[str, int]
    leader_before: str | None
    peer: str | None = None  # asym: the other end of the one-way loss
    detail: str = ""


@dataclass
class KindReport:
    faults: int = 0
    outages: list[float] = field(default_factory=list)
    longest_silence: float = 0.0
    dual: int = 0
    untouched_lapses: int = 0
    elections: int = 0
    unexpected_elections: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "faults": self.faults,
            "outage_p50_ms": _ms(percentile(self.outages, 50)),
            "outage_p90_ms": _ms(percentile(self.outages, 90)),
            "outage_max_ms": _ms(max(self.outages, default=None)),
            "longest_silence_ms": _ms(self.longest_silence),
            "dual_owner_moments": self.dual,
            "untouched_lease_lapses": self.untouched_lapses,
            "elections": self.elections,
            "unexpected_elections": self.unexpected_elections,
        }


def _ms(value: float | None) -> int | None:
    return None if value is None else round(1000 * value)


def percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(p) - 1]


def longest_gap(times: Sequence[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without a time in `times` (sorted)."""
    inside = [t for t in times if start <= t <= end]
    edges = [start, *inside, end]
    return max((b - a for a, b in itertools.pairwise(edges)), default=end - start)


def dual_moments(replies: Iterable[Reply]) -> list[tuple[str, float, tuple[str, ...]]]:
    """(VIP, when, MACs) for each request two MACs answered, and each A-B-A within
    DUAL_WINDOW: two nodes answering for one VIP."""
    replies = list(replies)
    out: list[tuple[str, float, tuple[str, ...]]] = []
    by_id = {r.ident: r for r in replies}
    for ident, macs in double_answers(replies).items():
        reply = by_id[ident]
        out.append((reply.vip, reply.at, tuple(sorted(macs))))
    for vip in sorted({r.vip for r in replies}):
        runs = reply_runs(replies, vip)
        for before, middle, after in zip(runs, runs[1:], runs[2:], strict=False):
            if before.mac == after.mac and after.first - before.last < DUAL_WINDOW:
                out.append((vip, middle.first, (before.mac, middle.mac)))
    return sorted(out, key=lambda m: m[1])


def analyze(
    replies: Sequence[Reply],
    faults: Sequence[Fault],
    lapses: Mapping[str, Sequence[float]],
) -> dict[str, Any]:
    """The campaign's figures per fault kind and in all. `lapses`: node -> wall times at
    which it logged that its lease ended."""
    times: dict[str, list[float]] = {}
    for reply in sorted(replies, key=lambda r: r.at):
        times.setdefault(reply.vip, []).append(reply.at)
    duals = dual_moments(replies)
    kinds: dict[str, KindReport] = {}
    rounds = []
    for fault in faults:
        report = kinds.setdefault(fault.kind, KindReport())
        report.faults += 1
        touched = [vip for vip, owner in fault.owners.items() if owner == fault.victim]
        outage = max(
            (longest_gap(times.get(vip, []), fault.start, fault.settled) for vip in touched),
            default=None,
        )
        if outage is not None:
            report.outages.append(outage)
        silence = max(
            (longest_gap(times.get(vip, []), fault.start, fault.settled) for vip in fault.owners),
            default=0.0,
        )
        report.longest_silence = max(report.longest_silence, silence)
        dual = [d for d in duals if fault.start - 0.5 <= d[1] <= fault.settled]
        report.dual += len(dual)
        # A CPU hog starves every node alike and cuts nobody off: no lease may end anywhere.
        touched_nodes = {fault.victim, fault.peer} if fault.kind != "cpuhog" else set()
        others = [n for n in lapses if n not in touched_nodes]
        untouched = sum(
            1 for n in others for t in lapses[n] if fault.wall_start <= t <= fault.wall_settled
        )
        report.untouched_lapses += untouched
        rise = max(
            (fault.terms_after.get(n, 0) - t for n, t in fault.terms_before.items()), default=0
        )
        report.elections += max(0, rise)
        expected = fault.kind in DEPOSING and fault.victim == fault.leader_before
        if not expected:
            report.unexpected_elections += max(0, rise)
        rounds.append(
            {
                "round": fault.round,
                "kind": fault.kind,
                "victim": fault.victim,
                "role": fault.role,
                "peer": fault.peer,
                "seconds": round(fault.end - fault.start, 3),
                "outage_ms": _ms(outage),
                "longest_silence_ms": _ms(silence),
                "dual_owner_moments": len(dual),
                "untouched_lease_lapses": untouched,
                "term_rise": max(0, rise),
                "detail": fault.detail,
            }
        )
    total = {
        "rounds": len(faults),
        "dual_owner_moments": len(duals),
        "untouched_lease_lapses": sum(k.untouched_lapses for k in kinds.values()),
        "unexpected_elections": sum(k.unexpected_elections for k in kinds.values()),
        "requests_answered": len(replies),
    }
    return {
        "kinds": {kind: kinds[kind].to_dict() for kind in KINDS if kind in kinds},
        "total": total,
        "dual_owner": [
            {"vip": vip, "at": round(at, 3), "macs": list(macs)} for vip, at, macs in duals
        ],
        "rounds": rounds,
    }


def render(result: Mapping[str, Any]) -> str:
    lines = [
        "fault campaign: a neighbour request for every VIP every 5 ms from the client",
        f"  {'fault':<10}{'rounds':>7}{'outage p50':>12}{'p90':>7}{'max':>7}"
        f"{'silence':>9}{'2 owners':>10}{'lapses*':>9}{'elections':>11}",
    ]

    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    for kind, k in result["kinds"].items():
        elections = f"{k['elections']}"
        if k["unexpected_elections"]:
            elections += f" ({k['unexpected_elections']}!)"
        lines.append(
            f"  {kind:<10}{k['faults']:>7}{cell(k['outage_p50_ms']):>12}"
            f"{cell(k['outage_p90_ms']):>7}{cell(k['outage_max_ms']):>7}"
            f"{cell(k['longest_silence_ms']):>9}{k['dual_owner_moments']:>10}"
            f"{k['untouched_lease_lapses']:>9}{elections:>11}"
        )
    total = result["total"]
    lines += [
        "  (ms; outage: the longest unanswered stretch of the VIPs the victim owned, from the",
        "   fault until the cluster settled; silence: of any VIP; lapses*: leases that ended on",
        "   nodes the fault did not touch; (n!): elections no fault of the leader explains)",
        f"rounds {total['rounds']}, requests answered {total['requests_answered']}, "
        f"dual-owner moments {total['dual_owner_moments']}, untouched lease lapses "
        f"{total['untouched_lease_lapses']}, unexpected elections {total['unexpected_elections']}",
    ]
    for moment in result["dual_owner"][:10]:
        lines.append(f"  TWO OWNERS: {moment['vip']} at {moment['at']}: {moment['macs']}")
    return "\n".join(lines)
