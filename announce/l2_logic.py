"""The decisions of the layer-2 announcer, as plain values: no sockets, no clock, no threads.

`L2State` knows which VIPs are held, until when (the lease deadline, a `time.monotonic()` value)
and when each one is due to be announced again; every method takes `now` from its caller. The
announcer in `announce.l2` reads the clock and asks `should_answer(vip, now)` right before every
frame it sends, so the rule "answer only under a valid lease" lives here and is tested here.

A VIP is *held* while it is in the last desired set and `now < valid_until`. Becoming held is a
takeover: a burst of announcements at once, one more at each `repeats` offset, then one every
`refresh_interval`. A lapsed lease releases everything; a later `set()` with a fresh deadline is a
new takeover (someone else may have answered meanwhile), so it announces again.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

Vip = IPv4Address | IPv6Address

# The announcer's counters (running totals since it started) and what each one counts; the
# agent exports them as `raftlb_l2_<name>_total`.
STATS = {
    "arp_requests": "ARP requests parsed (any target)",
    "ns_seen": "IPv6 neighbour solicitations parsed (any target)",
    "arp_replies": "ARP replies sent",
    "na_replies": "Neighbour advertisements sent in reply",
    "garp_sent": "Gratuitous ARP frames sent (request and reply forms count apart)",
    "na_sent": "Unsolicited neighbour advertisements sent",
    "stale_refusals": "Frames not sent for a VIP of the desired set because the lease had ended",
    "conflicts": "Another MAC announced (GARP) or probed (DAD) a VIP this node answers for",
    "send_errors": "Frames the socket refused to send",
    "recv_errors": "Failed receives (e.g. the link went down)",
    "membership_errors": "Failed joins or leaves of solicited-node multicast groups",
    "takeovers": "VIPs this announcer started answering for",
    "releases": "VIPs it stopped answering for because they left the desired set",
    "lapses": "VIPs it stopped answering for because the lease ended without renewal",
}


@dataclass(frozen=True)
class Schedule:
    """When a held VIP is announced, as offsets from its takeover.

    Slot 0 is the takeover burst (`burst` copies); slots 1..len(repeats) are at the `repeats`
    offsets; after them one slot every `refresh_interval` (math.inf: no periodic refresh).
    """

    burst: int = 3
    repeats: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    refresh_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")
        if math.isnan(self.refresh_interval) or self.refresh_interval <= 0:
            raise ValueError(f"refresh_interval must be > 0, got {self.refresh_interval}")
        previous = 0.0
        for offset in self.repeats:
            if not math.isfinite(offset) or offset <= previous:
                raise ValueError(f"repeats must be positive and increasing, got {self.repeats}")
            previous = offset

    def offset(self, slot: int) -> float:
        """Seconds after the takeover at which announcement `slot` is due."""
        if slot <= 0:
            return 0.0
        if slot <= len(self.repeats):
            return self.repeats[slot - 1]
        last = self.repeats[-1] if self.repeats else 0.0
        return last + self.refresh_interval * (slot - len(self.repeats))

    def slot_after(self, elapsed: float) -> int:
        """The first slot due strictly after `elapsed` seconds since the takeover.

        Used after sending, so a late wake-up sends once and skips the slots it missed instead of
        sending them all back to back.
        """
        if elapsed < 0:
            return 0
        if self.repeats and elapsed < self.repeats[-1]:
            return 1 + bisect.bisect_right(self.repeats, elapsed)
        last = self.repeats[-1] if self.repeats else 0.0
        slot = len(self.repeats) + math.floor((elapsed - last) / self.refresh_interval) + 1
        # Float rounding at a slot boundary, either way (1.9 / 0.01 is 190.0, 0.01 * 190 is
        # 1.9000000000000001): the first slot strictly later, not one past it.
        while self.offset(slot) <= elapsed:
            slot += 1
        while slot > len(self.repeats) + 1 and self.offset(slot - 1) > elapsed:
            slot -= 1
        return slot

    def copies(self, slot: int) -> int:
        """How many copies of the announcement to send in `slot`."""
        return self.burst if slot == 0 else 1


@dataclass
class _Held:
    taken_at: float
    slot: int  # the next announcement slot
    due_at: float
    order: int  # tie-break in the due queue (addresses of two families do not compare)


@dataclass(frozen=True)
class Change:
    """What one call changed: VIPs taken over, released by the caller, lapsed with the lease."""

    taken: frozenset[Vip] = frozenset()
    released: frozenset[Vip] = frozenset()
    lapsed: frozenset[Vip] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.taken or self.released or self.lapsed)


class L2State:
    """Held VIPs, their lease deadline and their announcement schedule (pure, not thread-safe)."""

    def __init__(self, schedule: Schedule | None = None) -> None:
        self.schedule = schedule or Schedule()
        self._held: dict[Vip, _Held] = {}
        self._wanted: frozenset[Vip] = frozenset()
        self._valid_until = -math.inf
        # Announcements by due time: (due_at, order, vip). Entries of VIPs released or
        # rescheduled since are dropped as they surface, so `due` costs what is due, not what
        # is held (thousands of VIPs, each refreshed on its own schedule).
        self._queue: list[tuple[float, int, Vip]] = []
        self._orders = itertools.count()

    @property
    def valid_until(self) -> float:
        """The lease deadline of the last `set()` (-inf before any)."""
        return self._valid_until

    def set(self, vips: Iterable[Vip], valid_until: float, now: float) -> Change:
        """Make `vips` the whole desired set, held until `valid_until` (idempotent)."""
        wanted = frozenset(vips)
        for vip in wanted:
            check_vip(vip)
        if math.isnan(valid_until) or valid_until == math.inf:
            # A lease always ends: an endless one would outlive a lost quorum.
            raise ValueError(f"valid_until must be a finite deadline, got {valid_until}")
        lapsed = self.expire(now)
        self._wanted = wanted
        self._valid_until = valid_until
        keep = wanted if now < valid_until else frozenset()
        released = frozenset(v for v in self._held if v not in keep)
        taken = frozenset(v for v in keep if v not in self._held)
        for vip in released:
            del self._held[vip]
        for vip in taken:
            held = _Held(taken_at=now, slot=0, due_at=now, order=next(self._orders))
            self._held[vip] = held
            heapq.heappush(self._queue, (now, held.order, vip))
        if not self._held:
            self._queue.clear()
        return Change(taken=taken, released=released, lapsed=lapsed)

    def extend(self, valid_until: float, now: float) -> Change:
        """The same desired set, held until a new deadline (a lease renewal): O(1) while the
        lease is still valid, else the same as `set()` with the last desired set."""
        if now < self._valid_until and now < valid_until and math.isfinite(valid_until):
            self._valid_until = valid_until
            return Change()
        return self.set(self._wanted, valid_until, now)

    def prolong(self, valid_until: float, now: float) -> bool:
        """Keep the held VIPs until `valid_until`, even past the deadline, when the caller's
        lease never ended (a renewal that was late, not missing): no lapse, nothing announced
        anew. False, and nothing changed, once they have lapsed or if `valid_until` is no
        later than the current deadline or already past."""
        if not self._held or not math.isfinite(valid_until):
            return False
        if valid_until <= max(now, self._valid_until):
            return False
        self._valid_until = valid_until
        return True

    def clear(self, now: float) -> Change:
        """Drop every VIP at once."""
        return self.set((), -math.inf, now)

    def expire(self, now: float) -> frozenset[Vip]:
        """Release everything if the lease has ended; returns what lapsed (once)."""
        if not self._held or now < self._valid_until:
            return frozenset()
        lapsed = frozenset(self._held)
        self._held.clear()
        self._queue.clear()
        return lapsed

    def deadline(self) -> float:
        """When the held VIPs lapse unless extended (inf while none are held)."""
        return self._valid_until if self._held else math.inf

    def should_answer(self, vip: Vip, now: float) -> bool:
        """The one rule: answer for `vip` only if it is held and the lease is valid at `now`."""
        return now < self._valid_until and vip in self._held

    def claimed_elsewhere(self, vip: Vip, mac: bytes, own_mac: bytes, now: float) -> bool:
        """Another MAC claims `vip` (announces it, or probes for it by DAD) while this node
        answers for it: a conflict, the one-owner invariant is broken somewhere."""
        return mac != own_mac and self.should_answer(vip, now)

    def is_wanted(self, vip: Vip) -> bool:
        """`vip` is in the last desired set, whatever its lease (to count stale refusals)."""
        return vip in self._wanted

    def held(self, now: float) -> frozenset[Vip]:
        """The VIPs answered at `now`."""
        return frozenset(self._held) if now < self._valid_until else frozenset()

    def due(self, now: float) -> list[tuple[Vip, int]]:
        """Announcements due at `now` as (vip, copies); advances their schedule.

        Nothing is due once the lease has ended, whether or not `expire()` ran.
        """
        if now >= self._valid_until:
            return []
        out: list[tuple[Vip, int]] = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            due_at, order, vip = heapq.heappop(queue)
            held = self._held.get(vip)
            if held is None or held.order != order or held.due_at != due_at:
                continue  # released, or taken again since
            out.append((vip, self.schedule.copies(held.slot)))
            held.slot = self.schedule.slot_after(now - held.taken_at)
            held.due_at = held.taken_at + self.schedule.offset(held.slot)
            if math.isfinite(held.due_at):
                heapq.heappush(queue, (held.due_at, order, vip))
        return out

    def next_wakeup(self) -> float:
        """When the caller must act next: an announcement or the lease end (inf if idle)."""
        if not self._held:
            return math.inf
        queue = self._queue
        while queue and (
            (held := self._held.get(queue[0][2])) is None
            or held.order != queue[0][1]
            or held.due_at != queue[0][0]
        ):
            heapq.heappop(queue)
        next_due = queue[0][0] if queue else math.inf
        return min(next_due, self._valid_until)


def check_vip(vip: object) -> None:
    """Raise if `vip` cannot be announced on a LAN (wrong type, multicast, unspecified...)."""
    if not isinstance(vip, IPv4Address | IPv6Address):
        raise TypeError(f"VIP must be an IPv4Address or IPv6Address, got {vip!r}")
    if vip.is_multicast or vip.is_unspecified or vip.is_loopback:
        raise ValueError(f"{vip} cannot be a layer-2 VIP")
    if isinstance(vip, IPv4Address) and vip == IPv4Address("255.255.255.255"):
        raise ValueError(f"{vip} cannot be a layer-2 VIP")
