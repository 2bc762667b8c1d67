"""Consistent hashing for VIP ports: lookup tables in the manner of Maglev (Eisenbud et al., NSDI
2016), filled by ranked pairs. Pure.

A table maps each of `size` slots (a prime) to a backend. The data plane hashes a flow (client
address and port, with a fixed seed) to a slot, so every node that builds the same table sends
the same flow to the same backend: a new owner after a failover picks an established connection
up where the old one left it, without any connection state passed between nodes.

Tables are built from backend *ids* (small integers the replicated state gives each backend of a
port and keeps while the backend stays, see `raft/backend_ids.py`) and weights, never from
addresses: ports whose backends have the same ids and weights share one table in the kernel (a
port that was never changed has ids 0..N-1), so thousands of services need a handful of tables,
not thousands of maps of thousands of elements.

The fill: every (slot, backend) pair has a pseudo-random score (SHAKE-128 of the size and the
id, so a backend's scores never depend on the others); pairs are taken best first, and a slot
goes to the first backend that scores it while that backend is under its quota (the table size
shared in proportion to the weights, the remainder one slot each to the backends that rank
first). Maglev's own fill (each backend in turn takes the next free slot of its permutation,
`offset + j * skip`) was measured here first: removing one backend of up to 12 moved up to 2.3%
of the table between backends that stayed at 4093 slots and 2.1% at 8191; ranked pairs moved at
most 1.7% at 4093, because a backend's choices follow its scores rather than the turn order.

Properties (tests/unit/appliance/test_consistent.py):
- Deterministic: the same members and size give the same table in every process and on every
  architecture, whatever PYTHONHASHSEED (no `hash()`, scores read as big-endian).
- Balanced: equal weights hold slot counts within one of each other; weighted backends hold
  `size * weight / total`, rounded.
- Small disruption: removing one backend of N moves its 1/N of the slots and up to ~2% of the
  table between the others (about 0.8% on average at the default size); adding one is the
  mirror image.

Cost: O(size x N log(size x N)) per table, about 25 ms at 4093 slots and 10 backends; tables are
cached by their members, so a change of one service builds at most one new table.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sys
from array import array
from collections.abc import Iterable

from appliance.model import check_table_size

DEFAULT_SIZE = 4093
_DOMAIN = b"raftlb consistent v1"  # part of the wire format: golden-tested, never changed


# Bounded for the largest size too: 128 x 524 KB at 65,521 slots (33 KB each at 4,093).
@functools.lru_cache(maxsize=128)
def _scores(member: int, size: int) -> array[int]:
    """A 64-bit score per slot for one backend id (big-endian on every architecture)."""
    scores = array("Q")
    scores.frombytes(hashlib.shake_128(b"%s %d %d" % (_DOMAIN, size, member)).digest(8 * size))
    if sys.byteorder == "little":
        scores.byteswap()
    return scores


def _rank(member: int) -> bytes:
    return hashlib.blake2b(b"%s rank %d" % (_DOMAIN, member), digest_size=8).digest()


def _quotas(members: tuple[tuple[int, int], ...], size: int) -> list[int]:
    total = sum(w for _, w in members)
    quotas = [size * w // total for _, w in members]
    order = sorted(range(len(members)), key=lambda k: _rank(members[k][0]))
    for k in order[: size - sum(quotas)]:
        quotas[k] += 1
    return quotas


@functools.lru_cache(maxsize=64)  # a table: ~33 KB at 4,093 slots, ~0.5 MB at 65,521
def _build(members: tuple[tuple[int, int], ...], size: int) -> tuple[int, ...]:
    pairs: list[int] = []
    for k, (member, _) in enumerate(members):
        # score, then slot, then the member's index: one int per pair sorts fastest.
        pairs += [(score << 32) | (s << 16) | k for s, score in enumerate(_scores(member, size))]
    pairs.sort(reverse=True)
    left = _quotas(members, size)
    entry = [-1] * size
    free = size
    for pair in pairs:
        slot, k = (pair >> 16) & 0xFFFF, pair & 0xFFFF
        if entry[slot] < 0 and left[k]:
            entry[slot] = members[k][0]
            left[k] -= 1
            free -= 1
            if not free:
                break
    assert free == 0, "the quotas add up to the size"
    return tuple(entry)


def table(members: Iterable[tuple[int, int]], size: int = DEFAULT_SIZE) -> tuple[int, ...]:
    """The lookup table: slot -> backend id, for backends given as (id, weight) pairs (ids
    distinct, 0..65535; weights >= 1, only their ratios count). Empty without backends."""
    check_table_size(size)
    ordered = tuple(sorted(members))
    if not ordered:
        return ()
    ids = [m for m, _ in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError(f"backend ids are not distinct: {ids}")
    if ids[0] < 0 or ids[-1] > 0xFFFF or min(w for _, w in ordered) < 1:
        raise ValueError(f"backend ids must be 0..65535 and weights >= 1: {list(ordered)}")
    return _build(normalized(ordered), size)


def normalized(members: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """The members with weights divided by their common divisor: (2, 2) builds what (1, 1)
    does, so they share one table."""
    divisor = math.gcd(*(w for _, w in members))
    return tuple((m, w // divisor) for m, w in members) if divisor > 1 else members
