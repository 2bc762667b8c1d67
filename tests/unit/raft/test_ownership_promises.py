"""Taking a VIP under quorum-promise leases, as the state applies it: evidence against the
holder's current epoch from enough registered peers, and the epoch raised by the taking."""

from __future__ import annotations

from typing import Any

from raft.state import ClusterState, view_to_data
from tests.unit.raft.test_ownership import VIP, ok, renew, with_service


def take(state: ClusterState, node: str, evidence: dict[str, Any], **extra: Any) -> Any:
    command = {
        "type": "vips.assign",
        "placements": {VIP: {"node": node, "reason": "dead"}},
        "evidence": evidence,
        "cluster_size": 3,
        "at": 100.0,
        **extra,
    }
    return ok(state, command)


def owned_by_n1() -> ClusterState:
    state = with_service()
    for node, incarnation in (("n1", 11), ("n2", 22), ("n3", 33)):
        renew(state, node, 1, incarnation=incarnation)
    take(state, "n1", {})  # a new VIP: nobody to take it from
    assert state.assignments[VIP].node == "n1"
    return state


def test_taking_without_evidence_is_refused() -> None:
    state = owned_by_n1()
    assert take(state, "n2", {})["refused"] == [VIP]
    assert state.assignments[VIP].node == "n1"


def test_taking_with_enough_current_evidence_raises_the_holders_epoch() -> None:
    state = owned_by_n1()
    value = take(state, "n2", {"n1": {"epoch": 0, "by": {"n2": 22, "n3": 33}}})
    assert value["changed"] == [VIP]
    assert value["taken_from"] == ["n1"]
    assert state.assignments[VIP].node == "n2"
    assert state.epochs["n1"] == 1
    # The same evidence again is stale: its epoch is gone.
    value = take(state, "n3", {"n2": {"epoch": 0, "by": {"n2": 22, "n3": 33}}})
    assert value["refused"] == [VIP]  # by n2 itself does not count: only n3 gave n2 up


def test_evidence_of_too_few_or_of_other_incarnations_is_refused() -> None:
    state = owned_by_n1()
    for by in ({"n2": 22}, {"n2": 22, "n3": 34}, {"n2": 22, "n1": 11}):
        value = take(state, "n2", {"n1": {"epoch": 0, "by": by}})
        assert value["refused"] == [VIP], by
    value = take(state, "n2", {"n1": {"epoch": 1, "by": {"n2": 22, "n3": 33}}})
    assert value["refused"] == [VIP]  # an epoch n1 has not reached
    assert state.epochs.get("n1", 0) == 0


def test_evidence_against_a_node_that_lost_nothing_raises_nothing() -> None:
    state = owned_by_n1()
    value = take(state, "n1", {"n3": {"epoch": 0, "by": {"n1": 11, "n2": 22}}})
    assert value["taken_from"] == []
    assert state.epochs.get("n3", 0) == 0


def test_a_refresh_raises_the_epoch_it_names_and_only_that() -> None:
    state = owned_by_n1()
    value = take(state, "n1", {}, refresh={"n1": 0, "n2": 5})
    assert value["epochs_raised"] == ["n1"]
    assert state.epochs["n1"] == 1
    assert state.assignments[VIP].node == "n1"  # nothing taken
    assert view_to_data(state.snapshot())["epochs"] == {"n1": 1}
    assert ClusterState.from_data(view_to_data(state.snapshot())).epochs["n1"] == 1
