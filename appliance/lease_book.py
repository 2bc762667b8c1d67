"""What the ownership loops read from, and tell, the quorum-promise book (raft/promises.py).

Two books behind one narrow interface: `LocalBook`, the `Promises` state machine in this
process under a lock (the heartbeat helper's own, and the unit tests'), and
appliance/helper_book.py's `HelperBook`, the agent's window onto the book that lives in the
heartbeat helper process. The loops only need the state's facts in, and out a `BookView`:
what the book decided at one moment, all of it from that moment, so the leader never pairs
evidence with an epoch it was not gathered against.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

from raft.promises import NodeFacts, Promises

# A node that said it held a lease within this long may be given VIPs (promise leases).
LEASED_WITHIN = 2.0


def lease_covers(lease_epoch: int | None, epoch: int | None) -> bool:
    """Whether a lease the book computed for this node's `lease_epoch` is good for VIPs given
    under its `epoch`: a promise is good for the epochs from some epoch on, so for any later
    one; never for an earlier one (a later state may have taken some of those VIPs away)."""
    return lease_epoch is not None and epoch is not None and lease_epoch <= epoch


@dataclass(frozen=True)
class BookView:
    """The book at `at` (monotonic seconds, the same clock in every process of the machine)."""

    at: float = float("-inf")
    lease_until: float = float("-inf")  # this node's lease end
    lease_epoch: int | None = None  # ... for its epochs up to this one (the book's)
    # Per node given up on by enough peers: (its epoch given up on, {giver: incarnation}).
    evidence: Mapping[str, tuple[int, Mapping[str, int]]] = field(default_factory=dict)
    stale: Mapping[str, int] = field(default_factory=dict)  # raft/promises.py `stale`
    leased: frozenset[str] = frozenset()  # said within LEASED_WITHIN that they hold a lease
    heard_at: Mapping[str, float] = field(default_factory=dict)  # last heartbeat, per node

    def age(self, node: str, now: float) -> float | None:
        at = self.heard_at.get(node)
        return None if at is None else max(0.0, now - at)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "until": None if self.lease_until == float("-inf") else self.lease_until,
            "epoch": self.lease_epoch,
            "evidence": {n: [e, dict(by)] for n, (e, by) in self.evidence.items()},
            "stale": dict(self.stale),
            "leased": sorted(self.leased),
            "heard": dict(self.heard_at),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> BookView:
        until = raw["until"]
        return cls(
            at=float(raw["at"]),
            lease_until=float("-inf") if until is None else float(until),
            lease_epoch=raw["epoch"],
            evidence={n: (int(e), dict(by)) for n, (e, by) in raw["evidence"].items()},
            stale={n: int(e) for n, e in raw["stale"].items()},
            leased=frozenset(raw["leased"]),
            heard_at={n: float(t) for n, t in raw["heard"].items()},
        )


class LeaseBook(Protocol):
    def observe(self, now: float, facts: Mapping[str, NodeFacts], raft_alive: Set[str]) -> None:
        """The applied state's facts of every node, and whose renewals still commit."""

    def view(self, now: float) -> BookView:
        """The book's latest decisions (at most a heartbeat period old for a helper's)."""


def view_of(book: Promises, now: float) -> BookView:
    """Everything the loops read, in one go (the caller holds the book's lock)."""
    facts = book.facts()
    evidence = {}
    for node in book.members:
        by = book.evidence(node)
        if by:
            evidence[node] = (facts[node].epoch, by)
    heard = {n: now - age for n in book.members if (age := book.silence(n, now)) is not None}
    return BookView(
        at=now,
        lease_until=book.lease_until(),
        lease_epoch=book.lease_epoch(),
        evidence=evidence,
        stale=book.stale(now),
        leased=frozenset(book.leased_peers(now, LEASED_WITHIN)),
        heard_at=heard,
    )


class LocalBook:
    """The book in this process, shared with a heartbeat thread through `lock`."""

    def __init__(self, promises: Promises) -> None:
        self.promises = promises
        self.lock = threading.Lock()

    def observe(self, now: float, facts: Mapping[str, NodeFacts], raft_alive: Set[str]) -> None:
        with self.lock:
            self.promises.observe_state(now, facts, raft_alive)

    def view(self, now: float) -> BookView:
        with self.lock:
            return view_of(self.promises, now)
