"""The one backoff policy: bounds, growth, and jitter within its range (random source injected)."""

from __future__ import annotations

import itertools
import random

import pytest

from appliance.backoff import Backoff


def fixed(value: float) -> Backoff:
    return Backoff(first=0.5, cap=30.0, jitter=0.5, rand=lambda: value)


@pytest.mark.parametrize(
    ("failures", "ceiling"),
    [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 16.0), (7, 30.0), (8, 30.0)],
)
def test_the_wait_doubles_from_first_up_to_the_cap(failures: int, ceiling: float) -> None:
    assert fixed(0.0).ceiling(failures) == ceiling
    assert fixed(0.0).delay(failures) == ceiling  # a draw of 0 takes nothing off


def test_the_jitter_takes_off_up_to_its_share_of_the_wait() -> None:
    assert fixed(0.5).delay(3) == pytest.approx(1.5)
    assert fixed(0.999999).delay(3) == pytest.approx(1.0, rel=1e-5)
    assert Backoff(jitter=0.0, rand=lambda: 0.999).delay(3) == 2.0
    assert Backoff(jitter=1.0, rand=lambda: 0.75).delay(3) == pytest.approx(0.5)


def test_every_wait_is_within_its_bounds_and_they_differ() -> None:
    rnd = random.Random(15)
    policy = Backoff(first=0.25, cap=10.0, jitter=0.5, rand=rnd.random)
    for failures in range(1, 40):
        ceiling = policy.ceiling(failures)
        waits = [policy.delay(failures) for _ in range(50)]
        assert all(ceiling / 2 < w <= ceiling <= 10.0 for w in waits)
        assert len(set(waits)) > 1  # two nodes that fail together do not retry together
    assert policy.ceiling(39) == 10.0


def test_the_ceiling_never_falls_as_failures_add_up() -> None:
    policy = Backoff(first=0.1, cap=7.0, factor=3.0)
    ceilings = [policy.ceiling(n) for n in range(1, 20)]
    assert all(a <= b for a, b in itertools.pairwise(ceilings))
    assert ceilings[-1] == 7.0


def test_many_failures_do_not_overflow() -> None:
    assert Backoff(cap=30.0, factor=10.0).ceiling(10**6) == 30.0
    assert Backoff(first=2.0, cap=5.0, factor=1.0).ceiling(10**6) == 2.0


@pytest.mark.parametrize(
    "settings",
    [{"first": 0.0}, {"first": 40.0, "cap": 30.0}, {"factor": 0.5}, {"jitter": 1.5}],
)
def test_nonsense_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**settings)
