"""What each applied command changed, so that readers react to changes instead of rescanning.

The replicated state notes the keys a command touched (services, VIP assignments, pools,
allocation owners, the drained set); readers keep the revision they last acted on and ask for
what changed since (`StateView.changes_since`). Lease renewals and member reports are not noted:
there is one of each per node, and readers look at them directly.

The log is bounded: when it is trimmed, a reader that fell further behind gets None and
rescans everything once, as an informer relists after "410 Gone".
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

KINDS = ("services", "assignments", "pools", "allocations", "drained")


@dataclass(frozen=True, slots=True)
class Changes:
    """The keys changed between two revisions."""

    services: frozenset[str] = frozenset()
    assignments: frozenset[str] = frozenset()  # VIPs (text)
    pools: frozenset[str] = frozenset()
    allocations: frozenset[str] = frozenset()  # owners
    drained: frozenset[str] = frozenset()  # nodes

    def __bool__(self) -> bool:
        return bool(
            self.services or self.assignments or self.pools or self.allocations or self.drained
        )


_NOTHING = Changes()


@dataclass(frozen=True, slots=True)
class LogReader:
    """A reader's fixed view of the log: entries up to `upto`, complete after `floor`."""

    entries: list[tuple[int, str, str]]
    floor: int
    upto: int

    def since(self, after: int) -> Changes | None:
        """What changed in revisions (after, upto]; None if some of it was trimmed away."""
        if after < self.floor:
            return None
        if not self.entries or self.entries[-1][0] <= after:
            return _NOTHING  # the common case (renewals change nothing noted): O(1)
        start = bisect.bisect_right(self.entries, after, key=lambda entry: entry[0])
        found: dict[str, set[str]] = {kind: set() for kind in KINDS}
        for revision, kind, key in self.entries[start:]:
            if revision > self.upto:
                break
            found[kind].add(key)
        return Changes(**{kind: frozenset(keys) for kind, keys in found.items()})


class ChangeLog:
    """Append-only notes of (revision, kind, key); written by the applying thread only.

    Readers get a `LogReader` taken under the state's lock: appends never disturb it (they land
    past its `upto`), and trimming replaces the list instead of cutting it in place.
    """

    def __init__(self, keep: int = 200_000) -> None:
        self.keep = keep
        self._entries: list[tuple[int, str, str]] = []
        self._floor = 0
        self._pending: list[tuple[str, str]] = []

    def note(self, kind: str, key: str) -> None:
        """Record that the command being applied changed `key` of `kind`."""
        self._pending.append((kind, key))

    def commit(self, revision: int) -> None:
        """The command being applied succeeded as `revision`."""
        if self._pending:
            self._entries.extend((revision, kind, key) for kind, key in self._pending)
            self._pending.clear()
        if len(self._entries) > self.keep:
            cut = len(self._entries) - self.keep // 2
            self._floor = self._entries[cut - 1][0]
            self._entries = self._entries[cut:]

    def discard(self) -> None:
        """The command being applied was refused: it changed nothing."""
        self._pending.clear()

    def reset(self, revision: int) -> None:
        """The whole state was replaced (a snapshot install): nothing before is known."""
        self._pending.clear()
        self._entries = []
        self._floor = revision

    def reader(self, upto: int) -> LogReader:
        return LogReader(self._entries, self._floor, upto)
