"""Consistent-hashing tables: the same everywhere, balanced, and moving little when a backend
comes or goes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.dataplane import consistent


def members(ids: list[int]) -> list[tuple[int, int]]:
    return [(i, 1) for i in ids]


def moved(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return sum(x != y for x, y in zip(a, b, strict=True)) / len(a)


def digest(table: tuple[int, ...]) -> str:
    return hashlib.sha256(",".join(map(str, table)).encode()).hexdigest()[:16]


def test_golden_tables_pin_the_hash_and_the_fill_order() -> None:
    # A change here reshuffles every flow of every service during a rolling upgrade: the
    # table is part of the wire format between nodes of different versions.
    assert consistent.table(members([0, 1, 2]), 251)[:12] == (1, 2, 1, 2, 1, 0, 1, 1, 0, 2, 0, 1)
    assert digest(consistent.table(members(list(range(10))))) == "f3bc5003fab18f1c"
    assert digest(consistent.table([(0, 1), (3, 2), (7, 5)], 8191)) == "feef5b30f4772579"


def test_the_same_table_in_processes_with_other_hash_seeds() -> None:
    code = (
        "from appliance.dataplane import consistent;"
        "print(hash('x'), ','.join(map(str, consistent.table([(i, 1) for i in range(7)], 4093))))"
    )
    root = Path(__file__).resolve().parents[3]
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout.split(" ", 1))
    assert outputs[0][0] != outputs[1][0]  # the seeds did differ
    assert outputs[0][1] == outputs[1][1]
    assert outputs[0][1].strip() == ",".join(map(str, consistent.table(members(list(range(7))))))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.sets(st.integers(0, 200), min_size=1, max_size=40))
def test_equal_weights_hold_within_one_slot_of_each_other(ids: set[int]) -> None:
    counts = Counter(consistent.table(members(sorted(ids))))
    assert set(counts) == ids
    assert max(counts.values()) - min(counts.values()) <= 1
    # Within 1% of the ideal share at the default size, up to 40 backends.
    ideal = consistent.DEFAULT_SIZE / len(ids)
    assert all(abs(c - ideal) / ideal <= 0.01 for c in counts.values())


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=8))
def test_weights_set_the_shares(weights: list[int]) -> None:
    table = consistent.table(list(enumerate(weights)), 8191)
    counts = Counter(table)
    total = sum(weights)
    for member, weight in enumerate(weights):
        assert abs(counts[member] - 8191 * weight / total) <= max(weights)


def test_weights_only_count_by_their_ratio() -> None:
    assert consistent.table([(0, 2), (4, 2)]) == consistent.table([(0, 1), (4, 1)])
    assert consistent.table([(0, 2), (4, 6)]) == consistent.table([(0, 1), (4, 3)])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.data())
def test_removing_a_backend_moves_its_share_and_little_else(data: st.DataObject) -> None:
    ids = sorted(data.draw(st.sets(st.integers(0, 40), min_size=2, max_size=12)))
    gone = data.draw(st.sampled_from(ids))
    before = consistent.table(members(ids))
    after = consistent.table(members([i for i in ids if i != gone]))
    # Every slot of the one removed moves; between survivors, at most 2% of the table.
    assert gone not in after
    survivors_moved = sum(a != b for a, b in zip(before, after, strict=True) if a != gone)
    assert survivors_moved / len(before) <= 0.02
    assert moved(before, after) <= 1 / len(ids) + 0.02


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.data())
def test_adding_a_backend_takes_its_share_and_little_else(data: st.DataObject) -> None:
    ids = sorted(data.draw(st.sets(st.integers(0, 40), min_size=1, max_size=11)))
    new = data.draw(st.integers(0, 41).filter(lambda i: i not in ids))
    before = consistent.table(members(ids))
    after = consistent.table(members([*ids, new]))
    assert moved(before, after) <= 1 / (len(ids) + 1) + 0.02
    # Slots that moved went to the new backend, but for the few reshuffled between others.
    others = sum(b not in (a, new) for a, b in zip(before, after, strict=True))
    assert others / len(before) <= 0.02


@pytest.mark.parametrize("size", [0, 250, 1000, 4095, 65537, 70001])
def test_sizes_must_be_primes_in_range(size: int) -> None:
    with pytest.raises(ValueError, match=f"table size {size}"):
        consistent.table(members([0]), size)


def test_bad_members_are_named() -> None:
    with pytest.raises(ValueError, match="not distinct"):
        consistent.table([(1, 1), (1, 2)])
    with pytest.raises(ValueError, match="weights >= 1"):
        consistent.table([(1, 0)])
    assert consistent.table([]) == ()
