"""The layer-2 announcer's decisions without sockets: schedule, leases, takeovers, the fake."""

from __future__ import annotations

import math
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from announce.l2_logic import STATS, Change, L2State, Schedule, Vip, check_vip
from tests.support.fake_announcer import FakeAnnouncer

V4 = IPv4Address("192.0.2.200")
V4B = IPv4Address("192.0.2.201")
V6 = IPv6Address("2001:db8:1::200")


# --- schedule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slot", "offset"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 14.0), (6, 24.0), (10, 64.0)],
)
def test_default_offsets(slot: int, offset: float) -> None:
    assert Schedule().offset(slot) == offset


@pytest.mark.parametrize(
    ("elapsed", "slot"),
    [(-1.0, 0), (0.0, 1), (0.49, 1), (0.5, 2), (1.5, 3), (3.99, 4), (4.0, 5), (13.9, 5), (14.0, 6)],
)
def test_slot_after(elapsed: float, slot: int) -> None:
    assert Schedule().slot_after(elapsed) == slot


def test_without_repeats_only_refreshes() -> None:
    schedule = Schedule(burst=1, repeats=(), refresh_interval=2.0)
    assert [schedule.offset(s) for s in range(4)] == [0.0, 2.0, 4.0, 6.0]
    assert schedule.slot_after(0.0) == 1
    assert schedule.slot_after(5.0) == 3


@given(
    repeats=st.lists(st.floats(0.01, 100), max_size=5, unique=True).map(
        lambda xs: tuple(sorted(xs))
    ),
    refresh=st.floats(0.01, 1000),
    elapsed=st.floats(0, 1e6),
)
@example(repeats=(), refresh=0.01, elapsed=1.9)  # 1.9 / 0.01 == 190.0, 0.01 * 190 > 1.9
def test_slot_after_is_the_first_slot_strictly_later(
    repeats: tuple[float, ...], refresh: float, elapsed: float
) -> None:
    schedule = Schedule(repeats=repeats, refresh_interval=refresh)
    slot = schedule.slot_after(elapsed)
    assert schedule.offset(slot) > elapsed
    assert schedule.offset(slot - 1) <= elapsed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"burst": 0},
        {"refresh_interval": 0.0},
        {"refresh_interval": math.nan},
        {"repeats": (1.0, 0.5)},
        {"repeats": (0.0, 1.0)},
        {"repeats": (1.0, 1.0)},
    ],
)
def test_schedule_refuses(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Schedule(**kwargs)  # type: ignore[arg-type]


def announcement_times(state: L2State, until: float, step: float = 0.01) -> list[float]:
    """Drive `state` like the announcer's loop, stepping the clock; one entry per copy."""
    out: list[float] = []
    now = 0.0
    while now <= until:
        for _vip, copies in state.due(now):
            out += [round(now, 2)] * copies
        now = round(now + step, 2)
    return out


def test_takeover_burst_repeats_then_refreshes() -> None:
    state = L2State()
    state.set([V4], valid_until=100.0, now=0.0)
    assert announcement_times(state, until=30.0) == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 14.0, 24.0]


def test_a_late_wakeup_sends_once_and_skips_missed_slots() -> None:
    state = L2State()
    state.set([V4], valid_until=100.0, now=0.0)
    assert state.due(0.0) == [(V4, 3)]
    assert state.due(3.0) == [(V4, 1)]  # slots 0.5, 1.0 and 2.0 missed: one send
    assert state.due(3.5) == []
    assert state.next_wakeup() == 4.0


def test_refresh_off_stops_after_the_repeats() -> None:
    state = L2State(Schedule(refresh_interval=math.inf))
    state.set([V4], valid_until=100.0, now=0.0)
    assert announcement_times(state, until=60.0) == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 4.0]
    assert state.next_wakeup() == 100.0  # only the lease end is left to act on


def test_announcing_stops_with_the_lease_even_without_expire() -> None:
    state = L2State()
    state.set([V4], valid_until=1.2, now=0.0)
    assert announcement_times(state, until=5.0) == [0.0, 0.0, 0.0, 0.5, 1.0]


# --- lease and takeovers -----------------------------------------------------------------------


def test_answers_only_while_the_lease_is_valid() -> None:
    state = L2State()
    state.set([V4, V6], valid_until=10.0, now=0.0)
    assert state.should_answer(V4, 9.999)
    assert state.should_answer(V6, 9.999)
    assert not state.should_answer(V4, 10.0)  # the deadline itself is already too late
    assert not state.should_answer(V4B, 5.0)
    assert state.held(5.0) == {V4, V6}
    assert state.held(10.0) == frozenset()
    # Nothing but the clock changed: a thawed agent that never ran expire() still refuses.
    assert state.is_wanted(V4)


def test_set_is_idempotent_and_renewal_is_not_a_takeover() -> None:
    state = L2State()
    assert state.set([V4], 10.0, now=0.0) == Change(taken=frozenset({V4}))
    assert state.due(0.0) == [(V4, 3)]
    assert not state.set([V4], 10.0, now=0.1)
    assert not state.set([V4], 20.0, now=5.0)  # renewal
    assert state.due(5.0) == [(V4, 1)]  # only the scheduled repeat, no new burst
    assert state.should_answer(V4, 15.0)


def test_set_takes_and_releases_the_difference() -> None:
    state = L2State()
    state.set([V4, V4B], 10.0, now=0.0)
    state.due(0.0)
    change = state.set([V4B, V6], 10.0, now=0.2)
    assert change == Change(taken=frozenset({V6}), released=frozenset({V4}))
    assert not state.should_answer(V4, 0.2)
    assert not state.is_wanted(V4)
    assert state.due(0.2) == [(V6, 3)]


def test_a_lapsed_lease_releases_once_and_renewing_later_is_a_new_takeover() -> None:
    state = L2State()
    state.set([V4], 1.0, now=0.0)
    state.due(0.0)
    assert state.expire(0.5) == frozenset()
    assert state.expire(1.0) == {V4}
    assert state.expire(1.5) == frozenset()
    assert state.next_wakeup() == math.inf
    # Another node may have answered meanwhile: announce again.
    assert state.set([V4], 5.0, now=2.0) == Change(taken=frozenset({V4}))
    assert state.due(2.0) == [(V4, 3)]


def test_set_reports_a_lapse_it_finds() -> None:
    state = L2State()
    state.set([V4, V6], 1.0, now=0.0)
    change = state.set([V4], 5.0, now=2.0)
    assert change == Change(taken=frozenset({V4}), lapsed=frozenset({V4, V6}))


def test_set_with_a_past_deadline_holds_nothing() -> None:
    state = L2State()
    state.set([V4], 10.0, now=0.0)
    change = state.set([V4], 1.0, now=2.0)
    assert change == Change(released=frozenset({V4}))
    assert state.held(2.0) == frozenset()
    assert state.due(2.0) == []
    assert state.is_wanted(V4)  # still asked for: refusals count as stale


def test_clear_drops_everything() -> None:
    state = L2State()
    state.set([V4, V6], 10.0, now=0.0)
    assert state.clear(now=1.0) == Change(released=frozenset({V4, V6}))
    assert not state.should_answer(V4, 1.0)
    assert not state.is_wanted(V6)
    assert state.next_wakeup() == math.inf


def test_next_wakeup_is_the_lease_end_if_sooner() -> None:
    state = L2State()
    state.set([V4], 0.3, now=0.0)
    state.due(0.0)
    assert state.next_wakeup() == 0.3
    state.set([V4], 100.0, now=0.1)
    assert state.next_wakeup() == 0.5


@pytest.mark.parametrize(
    ("vip", "error"),
    [
        ("192.0.2.200", TypeError),
        (IPv4Address("224.0.0.1"), ValueError),
        (IPv4Address("0.0.0.0"), ValueError),
        (IPv4Address("255.255.255.255"), ValueError),
        (IPv4Address("127.0.0.1"), ValueError),
        (IPv6Address("ff02::1"), ValueError),
        (IPv6Address("::"), ValueError),
    ],
)
def test_bad_vips_are_refused(vip: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_vip(vip)
    with pytest.raises(error):
        L2State().set([vip], 10.0, now=0.0)  # type: ignore[list-item]


@pytest.mark.parametrize("deadline", [math.nan, math.inf])
def test_endless_or_nan_deadline_is_refused(deadline: float) -> None:
    state = L2State()
    state.set([V4], 10.0, now=0.0)
    with pytest.raises(ValueError, match="finite"):
        state.set([V4, V6], deadline, now=1.0)
    assert state.held(1.0) == {V4}  # a refused call changes nothing


# --- the fake ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fake_records_calls_and_follows_the_lease() -> None:
    clock = Clock()
    fake = FakeAnnouncer(clock=clock)
    vips: list[Vip] = [V4, V6]
    fake.set(vips, 1.0)
    assert fake.held() == {V4, V6}
    clock.now = 1.0
    assert fake.held() == frozenset()
    fake.set([V4], 3.0)
    fake.clear()
    fake.close()
    fake.close()
    assert [c[0] for c in fake.calls] == ["set", "set", "clear", "close"]
    assert fake.calls[0] == ("set", frozenset({V4, V6}), 1.0)
    assert fake.changes[1] == Change(taken=frozenset({V4}), lapsed=frozenset({V4, V6}))
    stats = fake.stats()
    assert set(stats) == {*STATS, "held"}
    assert (stats["takeovers"], stats["releases"], stats["lapses"], stats["held"]) == (3, 1, 2, 0)
    with pytest.raises(RuntimeError, match="closed"):
        fake.set([V4], 10.0)


OURS, OTHER = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"


@pytest.mark.parametrize(
    ("mac", "vip", "now", "conflict"),
    [
        (OTHER, V4, 0.5, True),  # another MAC claims a VIP answered for
        (OURS, V4, 0.5, False),  # our own announcement, looped back
        (OTHER, V4, 1.0, False),  # the lease ended: someone else may hold it now
        (OTHER, V6, 0.5, False),  # not held here
    ],
)
def test_a_claim_is_a_conflict_only_by_another_mac_on_a_vip_answered_for(
    mac: bytes, vip: Vip, now: float, conflict: bool
) -> None:
    state = L2State()
    state.set([V4], valid_until=1.0, now=0.0)
    assert state.claimed_elsewhere(vip, mac, OURS, now) is conflict


def test_fake_counts_conflicts_by_the_same_rule() -> None:
    clock = Clock()
    fake = FakeAnnouncer(clock=clock, mac=OURS)
    fake.set([V4], 1.0)
    assert fake.heard_claim(V4, OTHER) and not fake.heard_claim(V4, OURS)
    clock.now = 1.0
    assert not fake.heard_claim(V4, OTHER)
    assert fake.stats()["conflicts"] == 1
    assert fake.status()["interface"] == "fake0"


def test_the_deadline_is_the_lease_end_only_while_something_is_held() -> None:
    state = L2State(Schedule())
    assert state.deadline() == math.inf
    state.set([V4], 10.0, now=1.0)
    assert state.deadline() == 10.0
    state.extend(12.0, now=9.0)
    assert state.deadline() == 12.0
    assert state.expire(12.0) == frozenset({V4})
    assert state.deadline() == math.inf  # lapsed: nothing to extend, nothing to ask for


def test_prolong_keeps_held_vips_past_the_deadline_and_never_revives_lapsed_ones() -> None:
    state = L2State(Schedule())
    state.set([V4], 10.0, now=1.0)
    state.due(9.9)  # the takeover's repeats, all sent
    assert not state.prolong(9.0, now=5.0)  # not later than the deadline: nothing changes
    assert state.deadline() == 10.0
    assert state.prolong(15.0, now=10.5)  # past the deadline, not yet expired: kept
    assert state.should_answer(V4, 10.6) and state.due(10.6) == []  # nothing announced anew
    assert not state.prolong(20.0, now=21.0)  # already past: no
    assert state.expire(21.0) == frozenset({V4})
    assert not state.prolong(30.0, now=22.0)  # lapsed: only a set() takes them again
    assert not state.should_answer(V4, 22.0)
