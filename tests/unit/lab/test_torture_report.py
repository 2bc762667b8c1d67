"""The fault campaign's analysis (appliance/lab/torture_report.py) on made-up records."""

from __future__ import annotations

from typing import Any

from appliance.lab.neighask import Reply
from appliance.lab.torture_report import Fault, analyze, dual_moments, longest_gap, render

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
V, W = "192.0.2.200", "192.0.2.201"


def answers(vip: str, mac: str, start: float, end: float, first_id: int) -> list[Reply]:
    """A reply every 5 ms from `start` to `end`."""
    count = round((end - start) / 0.005)
    return [Reply(first_id + i, vip, mac, start + 0.005 * i) for i in range(count)]


def fault(**kw: Any) -> Fault:
    base: dict[str, Any] = {
        "round": 1,
        "kind": "kill9",
        "victim": "n1",
        "role": "owner",
        "start": 1.0,
        "end": 1.5,
        "settled": 3.0,
        "wall_start": 1001.0,
        "wall_settled": 1003.0,
        "owners": {V: "n1", W: "n2"},
        "terms_before": {"n1": 1, "n2": 1, "n3": 1},
        "terms_after": {"n2": 1, "n3": 1},
        "leader_before": "n2",
    }
    return Fault(**{**base, **kw})


def test_longest_gap_counts_the_edges_of_the_window() -> None:
    assert longest_gap([1.1, 1.2, 1.9], 1.0, 2.0) == 1.9 - 1.2
    assert longest_gap([], 1.0, 2.0) == 1.0
    assert round(longest_gap([0.5, 1.05, 2.5], 1.0, 2.0), 3) == 0.95


def test_an_owner_change_is_an_outage_not_two_owners() -> None:
    replies = answers(V, A, 0.0, 1.0, 0) + answers(V, B, 1.3, 3.0, 1000)
    replies += answers(W, B, 0.0, 3.0, 5000)
    result = analyze(replies, [fault()], {"n1": [], "n2": [], "n3": []})
    kill = result["kinds"]["kill9"]
    assert kill["faults"] == 1
    assert 295 <= kill["outage_p50_ms"] <= 305
    assert kill["dual_owner_moments"] == 0
    assert result["total"]["dual_owner_moments"] == 0
    assert "kill9" in render(result)


def test_two_macs_for_one_request_or_in_turn_are_dual_owner_moments() -> None:
    both = [Reply(7, V, A, 1.0), Reply(7, V, B, 1.001)]
    assert [m[2] for m in dual_moments(both)] == [(A, B)]
    turn = answers(V, A, 0.0, 1.0, 0) + answers(V, B, 1.0, 1.05, 500) + answers(V, A, 1.1, 2, 900)
    moments = dual_moments(turn)
    assert len(moments) == 1 and moments[0][0] == V
    # A move and, seconds later, a move back (a rebalance) is no dual ownership.
    back = answers(V, A, 0.0, 1.0, 0) + answers(V, B, 1.3, 4.0, 500) + answers(V, A, 4.0, 5, 9e3)
    assert dual_moments(back) == []
    result = analyze(turn, [fault(start=0.9, settled=2.0)], {})
    assert result["total"]["dual_owner_moments"] == 1
    assert "TWO OWNERS" in render(result)


def test_lapses_count_only_on_untouched_nodes_and_inside_the_round() -> None:
    lapses = {"n1": [1001.5], "n2": [1002.0, 1100.0], "n3": [1000.0]}
    result = analyze([], [fault()], lapses)
    assert result["kinds"]["kill9"]["untouched_lease_lapses"] == 1  # n2's at 1002
    asym = fault(kind="asym", peer="n2")
    assert analyze([], [asym], lapses)["kinds"]["asym"]["untouched_lease_lapses"] == 0
    hog = fault(kind="cpuhog")  # starves every node: the victim's lapse counts too
    assert analyze([], [hog], lapses)["kinds"]["cpuhog"]["untouched_lease_lapses"] == 2


def test_elections_are_unexpected_unless_a_fault_took_the_leader_away() -> None:
    rose = {"n1": 3, "n2": 3, "n3": 3}
    of_leader = fault(victim="n2", leader_before="n2", terms_after=rose)
    report = analyze([], [of_leader], {})["kinds"]["kill9"]
    assert (report["elections"], report["unexpected_elections"]) == (2, 0)
    one_way = fault(kind="asym", victim="n2", leader_before="n2", peer="n1", terms_after=rose)
    report = analyze([], [one_way], {})["kinds"]["asym"]
    assert report["unexpected_elections"] == 2
    assert analyze([], [one_way], {})["total"]["unexpected_elections"] == 2
