"""Where a Service's VIP is answered, as its annotation says it, and the Events of its moves."""

from __future__ import annotations

from typing import Any

from appliance.bodies import VipEntry
from k8s_sync.owners import ANNOTATION, Move, OwnerTracker, annotation

SERVICE: dict[str, Any] = {"metadata": {"name": "web", "namespace": "shop", "annotations": {}}}


def vip(address: str = "192.0.2.10", **changes: Any) -> VipEntry:
    entry: dict[str, Any] = {
        "address": address,
        "pool": "lan",
        "announce": "l2",
        "owners": ["prod/shop/web:ipv4"],
        "services": ["prod/shop/web:ipv4"],
        "sharing_key": None,
        "ports": ["80/tcp"],
        "node": "n1",
        "epoch": 1,
        "since": 1.0,
        "releasing": None,
        "previous": None,
        "reason": "new",
        "dead_for": None,
        "bgp_announced_here": None,
        "backends": None,
    }
    return VipEntry.model_validate({**entry, **changes})


class Recorder:
    def __init__(self) -> None:
        self.patches: list[str] = []
        self.moves: list[Move] = []
        self.service = {"metadata": {**SERVICE["metadata"], "annotations": {}}}
        self.tracker = OwnerTracker(self.patch, lambda move, _: self.moves.append(move))

    def patch(self, service: Any, value: str) -> None:
        self.patches.append(value)
        self.service["metadata"]["annotations"][ANNOTATION] = value

    def poll(self, *entries: VipEntry) -> None:
        addresses = [e.address for e in entries]
        self.tracker.poll(entries, {"shop/web": (self.service, addresses)})


def test_the_annotation_names_each_addresss_node_and_changes_only_when_it_does() -> None:
    assert annotation([vip("2001:db8::5", node="n2"), vip()]) == "192.0.2.10=n1,2001:db8::5=n2"
    assert annotation([vip(announce="bgp", node=None)]) == "192.0.2.10=ecmp"
    assert annotation([vip(node=None, releasing="n1")]) == "192.0.2.10=-"
    seen = Recorder()
    seen.poll(vip())
    seen.poll(vip())
    assert seen.patches == ["192.0.2.10=n1"]  # patched once, not at every poll
    assert seen.moves == []  # the first poll only learns


def test_a_failover_is_a_warning_with_how_long_the_owner_was_silent() -> None:
    seen = Recorder()
    seen.poll(vip())
    seen.poll(vip(node="n2", epoch=2, previous="n1", reason="dead", dead_for=0.842))
    (move,) = seen.moves
    assert (move.kind, move.reason) == ("Warning", "VIPFailover")
    assert (
        move.message == "VIP 192.0.2.10 moved n1 -> n2: n1 stopped renewing, n1 silent for 0.84 s"
    )
    assert seen.patches[-1] == "192.0.2.10=n2"


def test_a_planned_move_through_no_node_is_one_event_once_it_arrived() -> None:
    seen = Recorder()
    seen.poll(vip())
    seen.poll(vip(node=None, epoch=2, releasing="n1", previous="n1", reason="drain"))
    assert seen.moves == [] and seen.patches[-1] == "192.0.2.10=-"
    seen.poll(vip(node="n3", epoch=3, previous=None, reason="drain"))
    (move,) = seen.moves
    assert (move.kind, move.reason, move.message) == (
        "Normal",
        "VIPMoved",
        "VIP 192.0.2.10 moved n1 -> n3 (drain)",
    )


def test_no_event_for_a_new_vip_a_bgp_vip_or_a_vip_taken_back() -> None:
    seen = Recorder()
    seen.poll(vip(node=None, epoch=0, reason=None))
    seen.poll(vip(epoch=1))  # a new VIP gets its first owner
    seen.poll(vip(epoch=2, previous="n1", reason="dead"))  # the same node again
    seen.poll(vip(announce="bgp", node=None, epoch=3))
    assert seen.moves == []
