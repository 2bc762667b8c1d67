"""The address index behind IPAM: every question an allocation asks, answered in O(log n).

`ClusterState` keeps one `AddressIndex` beside its pools and allocations and tells it about
every change; `raft.ipam` asks it where the lowest free address of a pool is, which pool holds
an address, whether a new pool overlaps another, and so on. Without it each allocation walked
the pool address by address and re-parsed every pool (the 1,000th service cost ~190 ms of
apply on pysyncobj's tick thread, starving heartbeats).

What it holds, all derived from (pools, allocations):
- the allocated addresses of each IP version, sorted (distinct: a shared address counts once);
- every pool block, sorted, for "which pool holds X" and overlap checks;
- per pool and version, which of its blocks still have a free address;
- per (pool, sharing key, version), the addresses shared under that key;
- per pool, its allocation owners; per version, the pools and the default pools.

The lowest free address of a block [a, b] is found by binary search over the sorted allocated
addresses inside it: with u_0 < u_1 < ... those addresses and rank(x) the number of usable
addresses in [a, x), rank(u_k) >= k, with equality exactly while the first k+1 usable addresses
are all taken. Every allocated address is usable in its pool (IPAM never hands out another, and
a pool change that would strand one is refused), which is what makes that predicate monotone.

Changes made inside `transaction()` are undone if it raises: a refused batch leaves the index
exactly as it was, at the cost of its own size, not the state's.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedList

from appliance.model import IPFamily, Pool

# IPv4 addresses ending in .0 and .255, skipped by pools with avoid_buggy_ips.
_BUGGY = (0, 255)


def buggy_below(value: int) -> int:
    """How many non-negative ints below `value` end in .0 or .255 (as IPv4 addresses)."""
    return 2 * (value // 256) + (1 if value % 256 > 0 else 0)


def usable_between(first: int, end: int, avoid_buggy: bool) -> int:
    """How many usable addresses lie in [first, end)."""
    count = end - first
    if avoid_buggy:
        count -= buggy_below(end) - buggy_below(first)
    return count


def nth_usable(first: int, last: int, n: int, avoid_buggy: bool) -> int | None:
    """The n-th (0-based) usable address of the block [first, last], or None past its end."""
    if not avoid_buggy:
        value = first + n
        return value if value <= last else None
    # Smallest x with n + 1 usable addresses in [first, x]: binary search, O(log block size).
    low, high = first, last
    if usable_between(first, last + 1, True) <= n:
        return None
    while low < high:
        mid = (low + high) // 2
        if usable_between(first, mid + 1, True) >= n + 1:
            high = mid
        else:
            low = mid + 1
    return low


@dataclass
class _Space:
    """One pool's blocks of one IP version, and which of them still have a free address."""

    firsts: list[int]
    lasts: list[int]
    avoid_buggy: bool
    sizes: list[int]  # usable addresses per block
    taken: list[int] = field(default_factory=list)  # allocated addresses per block
    nonfull: SortedList[int] = field(default_factory=SortedList)  # block indexes
    used: int = 0  # allocated addresses in the pool

    def block_of(self, value: int) -> int | None:
        at = bisect.bisect_right(self.firsts, value) - 1
        return at if at >= 0 and value <= self.lasts[at] else None


class AddressIndex:
    """Indexes over pools and allocations; see the module docstring. Not thread-safe: only the
    thread applying Raft entries touches it."""

    def __init__(self) -> None:
        self.used: dict[int, SortedList[int]] = {4: SortedList(), 6: SortedList()}
        # Allocated IPv4 addresses ending in .0 or .255 (for pools turning avoid_buggy_ips on).
        self.buggy_used: SortedList[int] = SortedList()
        self.blocks: dict[int, SortedList[tuple[int, int, str]]] = {
            4: SortedList(),
            6: SortedList(),
        }
        self.spaces: dict[tuple[str, int], _Space] = {}
        self.shared: dict[tuple[str, str, int], SortedList[int]] = {}
        self.owners: dict[str, set[str]] = {}  # pool -> allocation owners
        self.pools_of: dict[int, set[str]] = {4: set(), 6: set()}
        self.defaults_of: dict[int, set[str]] = {4: set(), 6: set()}
        self._undo: list[Callable[[], object]] | None = None

    # -- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Undo every change made inside if the block raises (not re-entrant)."""
        if self._undo is not None:
            yield
            return
        self._undo = []
        try:
            yield
        except BaseException:
            for undo in reversed(self._undo):
                undo()
            raise
        finally:
            self._undo = None

    def _record(self, undo: Callable[[], object]) -> None:
        if self._undo is not None:
            self._undo.append(undo)

    def _sorted_add(self, items: SortedList[Any], value: Any) -> None:
        items.add(value)
        self._record(lambda: items.remove(value))

    def _sorted_remove(self, items: SortedList[Any], value: Any) -> None:
        items.remove(value)
        self._record(lambda: items.add(value))

    def _set_add(self, items: set[str], value: str) -> None:
        if value not in items:
            items.add(value)
            self._record(lambda: items.discard(value))

    def _set_discard(self, items: set[str], value: str) -> None:
        if value in items:
            items.discard(value)
            self._record(lambda: items.add(value))

    # -- pools ----------------------------------------------------------------------------------

    def add_pool(self, pool: Pool) -> None:
        for version in (4, 6):
            firsts, lasts = pool.sorted_blocks(_family(version))
            if not firsts:
                continue
            for first, last in zip(firsts, lasts, strict=True):
                self._sorted_add(self.blocks[version], (first, last, pool.name))
            self._set_add(self.pools_of[version], pool.name)
            if pool.default:
                self._set_add(self.defaults_of[version], pool.name)
            avoid = pool.avoid_buggy_ips and version == 4
            space = _Space(
                list(firsts),
                list(lasts),
                avoid,
                [usable_between(a, b + 1, avoid) for a, b in zip(firsts, lasts, strict=True)],
            )
            for i, (first, last) in enumerate(zip(firsts, lasts, strict=True)):
                taken = self.count_used(version, first, last)
                space.taken.append(taken)
                space.used += taken
                if taken < space.sizes[i]:
                    space.nonfull.add(i)
            self._put_space((pool.name, version), space)

    def remove_pool(self, pool: Pool) -> None:
        for version in (4, 6):
            firsts, lasts = pool.sorted_blocks(_family(version))
            if not firsts:
                continue
            for first, last in zip(firsts, lasts, strict=True):
                self._sorted_remove(self.blocks[version], (first, last, pool.name))
            self._set_discard(self.pools_of[version], pool.name)
            self._set_discard(self.defaults_of[version], pool.name)
            self._put_space((pool.name, version), None)

    def _put_space(self, key: tuple[str, int], space: _Space | None) -> None:
        old = self.spaces.get(key)

        def restore() -> None:
            if old is None:
                self.spaces.pop(key, None)
            else:
                self.spaces[key] = old

        if space is None:
            self.spaces.pop(key, None)
        else:
            self.spaces[key] = space
        self._record(restore)

    def pool_at(self, version: int, value: int) -> str | None:
        """The pool whose blocks hold the address, if any."""
        blocks = self.blocks[version]
        at = blocks.bisect_left((value + 1, -1, "")) - 1
        if at < 0:
            return None
        first, last, name = blocks[at]
        return name if first <= value <= last else None

    def overlap(self, version: int, first: int, last: int) -> tuple[int, int, str] | None:
        """A block of any pool in the index that overlaps [first, last]."""
        blocks = self.blocks[version]
        at = blocks.bisect_left((last + 1, -1, "")) - 1
        # Blocks in the index are disjoint: only the last one starting at or before `last`
        # can reach into the range.
        if at >= 0 and blocks[at][1] >= first:
            found: tuple[int, int, str] = blocks[at]
            return found
        return None

    # -- allocated addresses ----------------------------------------------------------------------

    def count_used(self, version: int, first: int, last: int) -> int:
        used = self.used[version]
        return int(used.bisect_right(last) - used.bisect_left(first))

    def used_between(self, version: int, first: int, last: int, limit: int) -> list[int]:
        """Up to `limit` allocated addresses in [first, last], lowest first."""
        used = self.used[version]
        start = used.bisect_left(first)
        return [int(v) for v in used.islice(start, min(start + limit, used.bisect_right(last)))]

    def buggy_between(self, first: int, last: int, limit: int) -> list[int]:
        """Up to `limit` allocated IPv4 addresses ending in .0/.255 in [first, last]."""
        start = self.buggy_used.bisect_left(first)
        end = min(start + limit, self.buggy_used.bisect_right(last))
        return [int(v) for v in self.buggy_used.islice(start, end)]

    def address_taken(self, version: int, value: int, pool: str, sharing_key: str | None) -> None:
        """The address has its first owner now."""
        self._sorted_add(self.used[version], value)
        if version == 4 and value % 256 in _BUGGY:
            self._sorted_add(self.buggy_used, value)
        if sharing_key is not None:
            key = (pool, sharing_key, version)
            if key not in self.shared:
                self.shared[key] = SortedList()
                self._record(lambda: self.shared.pop(key, None))
            self._sorted_add(self.shared[key], value)
        self._recount(pool, version, value, +1)

    def address_freed(self, version: int, value: int, pool: str, sharing_key: str | None) -> None:
        """The address lost its last owner."""
        self._sorted_remove(self.used[version], value)
        if version == 4 and value % 256 in _BUGGY:
            self._sorted_remove(self.buggy_used, value)
        if sharing_key is not None:
            shared = self.shared.get((pool, sharing_key, version))
            if shared is not None and value in shared:
                self._sorted_remove(shared, value)
        self._recount(pool, version, value, -1)

    def _recount(self, pool: str, version: int, value: int, delta: int) -> None:
        space = self.spaces.get((pool, version))
        if space is None:
            return
        space.used += delta
        self._record(lambda: setattr(space, "used", space.used - delta))
        at = space.block_of(value)
        if at is None:
            return
        space.taken[at] += delta
        self._record(lambda: space.taken.__setitem__(at, space.taken[at] - delta))
        full = space.taken[at] >= space.sizes[at]
        if full and at in space.nonfull:
            self._sorted_remove(space.nonfull, at)
        elif not full and at not in space.nonfull:
            self._sorted_add(space.nonfull, at)

    def owner_added(self, pool: str, owner: str) -> None:
        if pool not in self.owners:
            self.owners[pool] = set()
            self._record(lambda: self.owners.pop(pool, None))
        self._set_add(self.owners[pool], owner)

    def owner_removed(self, pool: str, owner: str) -> None:
        owners = self.owners.get(pool)
        if owners is not None:
            self._set_discard(owners, owner)

    # -- questions ------------------------------------------------------------------------------

    def first_free(self, pool: str, version: int) -> int | None:
        """The lowest unallocated usable address of the pool, or None when it is full."""
        space = self.spaces.get((pool, version))
        while space is not None and space.nonfull:
            at = space.nonfull[0]
            found = self._first_unused(version, space, at)
            if found is not None:
                return found
            # Only an index that disagrees with itself gets here; mend it rather than loop.
            self._sorted_remove(space.nonfull, at)
        return None

    def _first_unused(self, version: int, space: _Space, at: int) -> int | None:
        first, last, avoid = space.firsts[at], space.lasts[at], space.avoid_buggy
        used = self.used[version]
        low, high = used.bisect_left(first), used.bisect_right(last)
        # Smallest k with rank(used[low + k]) > k (or k = high - low): binary search.
        lo, hi = 0, high - low
        while lo < hi:
            mid = (lo + hi) // 2
            if usable_between(first, int(used[low + mid]), avoid) > mid:
                hi = mid
            else:
                lo = mid + 1
        value = nth_usable(first, last, lo, avoid)
        if value is not None and value not in used:
            return value
        # The invariant (allocated addresses are usable) does not hold here: walk the block.
        value = first
        while value <= last:
            if not (avoid and value % 256 in _BUGGY) and value not in used:
                return value
            value += 1
        return None

    def used_in_pool(self, pool: str, version: int) -> int:
        space = self.spaces.get((pool, version))
        return space.used if space is not None else 0

    def shared_addresses(self, pool: str, sharing_key: str, version: int) -> list[int]:
        """The addresses shared under the key in the pool, lowest first."""
        return [int(v) for v in self.shared.get((pool, sharing_key, version), ())]

    def pool_owners(self, pool: str) -> set[str]:
        return self.owners.get(pool, set())

    def summary(self) -> dict[str, Any]:
        """Everything the index holds, canonically: an index kept up to date change by change
        (and rolled back) must equal one built from scratch (tests)."""
        return {
            "used": {v: list(items) for v, items in self.used.items()},
            "buggy_used": list(self.buggy_used),
            "blocks": {v: list(items) for v, items in self.blocks.items()},
            "spaces": {
                key: (s.firsts, s.lasts, s.avoid_buggy, s.sizes, s.taken, list(s.nonfull), s.used)
                for key, s in sorted(self.spaces.items())
            },
            "shared": {k: list(v) for k, v in sorted(self.shared.items()) if v},
            "owners": {k: sorted(v) for k, v in sorted(self.owners.items()) if v},
            "pools_of": {v: sorted(names) for v, names in self.pools_of.items()},
            "defaults_of": {v: sorted(names) for v, names in self.defaults_of.items()},
        }


def _family(version: int) -> IPFamily:
    return IPFamily.IPV4 if version == 4 else IPFamily.IPV6
