"""The state's change log: readers see what changed since their revision, never a refused
command's keys, and rescan (None) once the log no longer reaches back to them."""

from __future__ import annotations

from typing import Any

from raft.changelog import ChangeLog, Changes
from raft.state import ClusterState


def command(kind: str, **body: Any) -> dict[str, Any]:
    return {"v": 1, "type": kind, **body}


POOL = command("pool.put", pool={"name": "p", "addresses": ["192.0.2.0/28"], "default": True})


def put(name: str, **spec: Any) -> dict[str, Any]:
    return command("service.put", service={"id": name, "ports": [{"port": 80}], **spec})


def test_changes_since_name_what_each_command_touched() -> None:
    state = ClusterState()
    state.apply(POOL)
    start = state.revision
    state.apply(put("a"))
    state.apply(put("b"))
    middle = state.snapshot()
    state.apply(command("service.delete", id="a"))
    changes = state.snapshot().changes_since(start)
    assert changes == Changes(services=frozenset({"a", "b"}), allocations=frozenset({"a", "b"}))
    assert middle.changes_since(start) == changes  # a snapshot does not see later commands
    assert state.snapshot().changes_since(middle.revision) == Changes(
        services=frozenset({"a"}), allocations=frozenset({"a"})
    )


def test_a_refused_batch_leaves_no_trace_in_the_log() -> None:
    state = ClusterState()
    state.apply(POOL)
    start = state.revision
    refused = command("batch", commands=[put("a"), put("b", vip="203.0.113.9")])
    assert not state.apply(refused)["ok"]
    assert not state.snapshot().changes_since(start)
    assert state.revision == start


def test_renewals_and_reports_are_not_noted() -> None:
    state = ClusterState()
    start = state.revision
    renewal = {"node": "n1", "incarnation": 1, "seq": 1, "sent_at": 1.0}
    assert state.apply(command("lease.renew", renewal=renewal))["ok"]
    assert state.revision == start + 1
    assert state.snapshot().changes_since(start) == Changes()


def test_a_reader_behind_the_trimmed_log_is_told_to_rescan() -> None:
    log = ChangeLog(keep=10)
    for revision in range(1, 31):
        log.note("services", f"s{revision}")
        log.commit(revision)
    reader = log.reader(30)
    assert reader.since(2) is None  # trimmed away
    recent = reader.since(27)
    assert recent is not None and recent.services == {"s28", "s29", "s30"}


def test_a_snapshot_install_starts_the_log_afresh() -> None:
    state = ClusterState()
    state.apply(POOL)
    state.apply(put("a"))
    restored = ClusterState.from_data(state.to_data())
    assert restored.snapshot().changes_since(0) is None
    assert restored.snapshot().changes_since(restored.revision) == Changes()
