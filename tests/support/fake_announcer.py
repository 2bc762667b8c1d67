"""A stand-in for `L2Announcer` for unit tests of the agent: no socket, no thread, no root.

It keeps the same decisions (`L2State`: a VIP is held only while its lease is valid) against an
injectable clock and records every call, so tests can assert what the agent asked for and what
would have been answered at any moment. Not thread-safe: one test drives it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from announce.l2_logic import STATS, Change, L2State, Schedule, Vip

if TYPE_CHECKING:
    from announce.l2 import VipAnnouncer


class FakeAnnouncer:
    """Records `set`/`clear`/`close` calls and what each one took over or released."""

    def __init__(
        self,
        interface: str = "fake0",
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = None,
        mac: bytes = b"\x02\x00\x00\x00\x00\x01",
    ) -> None:
        self.interface = interface
        self.mac = mac
        self.clock = clock
        self.calls: list[tuple[str, frozenset[Vip], float]] = []
        self.changes: list[Change] = []
        self.closed = False
        self._state = L2State(schedule)
        # Every counter of the real one; those of frames it never sends stay 0.
        self._counts = dict.fromkeys(STATS, 0)

    def set(self, vips: Iterable[Vip], valid_until: float) -> None:
        """Record the desired set and deadline; same validation and semantics as the real one."""
        if self.closed:
            raise RuntimeError(f"l2 announcer on {self.interface} is closed")
        wanted = frozenset(vips)
        self._record(self._state.set(wanted, valid_until, self.clock()))
        self.calls.append(("set", wanted, valid_until))

    def extend(self, valid_until: float) -> None:
        """Record a new deadline for the same VIPs."""
        if self.closed:
            raise RuntimeError(f"l2 announcer on {self.interface} is closed")
        self._record(self._state.extend(valid_until, self.clock()))
        self.calls.append(("extend", frozenset(), valid_until))

    def clear(self) -> None:
        """Record a clear; nothing is held afterwards."""
        if self.closed:
            return
        self._record(self._state.clear(self.clock()))
        self.calls.append(("clear", frozenset(), float("-inf")))

    def close(self) -> None:
        """Record a close (idempotent); `set()` raises afterwards, like the real one."""
        if self.closed:
            return
        self._record(self._state.clear(self.clock()))
        self.closed = True
        self.calls.append(("close", frozenset(), float("-inf")))

    def held(self) -> frozenset[Vip]:
        """The VIPs a real announcer would answer for now (by `clock`)."""
        return self._state.held(self.clock())

    def heard_claim(self, vip: Vip, mac: bytes) -> bool:
        """Another host's GARP or DAD probe for `vip` from `mac`: counted as a conflict by the
        real announcer's rule (only while `vip` is answered for). True if it was one."""
        conflict = self._state.claimed_elsewhere(vip, mac, self.mac, self.clock())
        self._counts["conflicts"] += int(conflict)
        return conflict

    def stats(self) -> dict[str, int]:
        """The real announcer's counters and `held` (takeovers, releases, lapses and conflicts
        counted as it would; nothing is sent, so the frame counters stay 0)."""
        return {**self._counts, "held": len(self.held())}

    def status(self) -> dict[str, Any]:
        """The interface and `stats()`, like the real one."""
        return {"interface": self.interface, **self.stats()}

    def _record(self, change: Change) -> None:
        self.changes.append(change)
        self._counts["takeovers"] += len(change.taken)
        self._counts["releases"] += len(change.released)
        self._counts["lapses"] += len(change.lapsed)


if TYPE_CHECKING:
    _conforms: type[VipAnnouncer] = FakeAnnouncer
