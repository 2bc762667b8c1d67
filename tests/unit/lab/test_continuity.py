"""The verdict on flows through an event (appliance/lab/continuity.py): survived, moved, broken,
the longest stall of a survivor and the outage."""

from __future__ import annotations

import pytest

from appliance.lab.continuity import Flow, peers_before, verdict


def flow(kind: str, answers: list[tuple[float, str]], broke: float | None = None) -> Flow:
    seen = [(t, b, "192.0.2.200") for t, b in answers]
    return Flow(kind, seen, broke, "ConnectionResetError" if broke else "")


def test_survivors_movers_and_broken_flows_are_told_apart() -> None:
    flows = [
        flow("tcp", [(0.9, "b1"), (1.35, "b1"), (1.36, "b1"), (1.9, "b1")]),  # 0.54 s at 1.36
        flow("tcp", [(0.95, "b2"), (1.8, "b2")]),  # back after 0.85 s: the longest stall
        flow("tcp", [(0.9, "b1"), (1.4, "b2")]),  # another backend answered: moved
        flow("tcp", [(0.9, "b3")], broke=1.3),  # reset
        flow("tcp", [(0.9, "b3")]),  # never answered again
        flow("tcp", [(1.5, "b1")]),  # opened after the event: not counted
    ]
    v = verdict(flows, at=1.0, end=3.0)
    assert (v.survived, v.total, v.moved) == (2, 5, 1)
    assert v.longest_stall_s == pytest.approx(0.85)
    assert v.typical_stall_s == pytest.approx(0.54)  # median of 0.54, 0.85 and the mover's 0.5
    assert sorted(v.broken) == ["ConnectionResetError", "no answer after the event"]
    assert v.as_dict()["survived_pct"] == 40.0


def test_answers_after_the_window_and_a_break_after_it_do_not_count() -> None:
    late = flow("udp", [(0.9, "b1"), (3.5, "b1")], broke=3.6)
    v = verdict([late], at=1.0, end=3.0)
    assert (v.survived, v.broken) == (0, ["no answer after the event"])


def test_peers_before_counts_each_flows_last_forwarding_node() -> None:
    flows = [
        Flow("tcp", [(0.5, "b1", "192.0.2.11"), (0.9, "b1", "192.0.2.12"), (1.5, "b1", "x")]),
        Flow("tcp", [(0.8, "b2", "192.0.2.12")]),
        Flow("udp", [(1.2, "b2", "192.0.2.13")]),
    ]
    assert peers_before(flows, at=1.0) == {"192.0.2.12": 2}
