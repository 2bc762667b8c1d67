"""Backend ids: kept while a backend stays, lowest free for a new one, stored and restored with
the service (consistent hashing builds its tables from them)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from appliance.model import Service, ServiceSpec
from raft import backend_ids
from raft.state import ClusterState


def spec(*ports: tuple[int, list[str]], protocol: str = "tcp") -> ServiceSpec:
    return ServiceSpec.model_validate(
        {
            "id": "c/ns/web",
            "ports": [
                {
                    "port": port,
                    "protocol": protocol,
                    "backends": [{"address": a, "port": 8080} for a in addresses],
                }
                for port, addresses in ports
            ],
        }
    )


def stored(s: ServiceSpec, ids: list[list[int]] | None = None) -> Service:
    return Service(spec=s, address=ipaddress.ip_address("192.0.2.1"), backend_ids=ids or [])


A, B, C, D, E = (f"198.51.100.{i}" for i in range(1, 6))


def test_a_new_service_numbers_each_ports_backends_from_zero() -> None:
    assert backend_ids.assign(spec((80, [A, B, C]), (443, [C, A])), None) == [[0, 1, 2], [0, 1]]


def test_staying_backends_keep_their_ids_and_new_ones_fill_the_lowest_gaps() -> None:
    before = stored(spec((80, [A, B, C, D])), [[0, 1, 2, 3]])
    # B (1) and D (3) leave, E arrives, the order changes: E takes 1, the lowest free id.
    assert backend_ids.assign(spec((80, [C, E, A])), before) == [[2, 1, 0]]
    # A replaced backend takes over exactly its predecessor's id, so its table slots.
    assert backend_ids.assign(spec((80, [A, E, C, D])), before) == [[0, 1, 2, 3]]


def test_ids_follow_the_port_not_its_position_and_a_new_protocol_starts_afresh() -> None:
    before = stored(spec((80, [A, B]), (443, [C, D])), [[5, 7], [0, 1]])
    assert backend_ids.assign(spec((443, [D]), (80, [B, A])), before) == [[1], [7, 5]]
    udp = spec((80, [B, A]), protocol="udp")
    assert backend_ids.assign(udp, before) == [[0, 1]]


def test_a_service_stored_before_ids_existed_reads_its_positions() -> None:
    old = stored(spec((80, [A, B, C])))
    assert old.ids_of(0) == [0, 1, 2]
    assert backend_ids.assign(spec((80, [C, D])), old) == [[2, 0]]


@pytest.mark.parametrize(
    ("ids", "message"),
    [([[0, 1]], "do not match"), ([[0, 0, 1]], "distinct"), ([[0, -1, 2]], "distinct")],
)
def test_stored_ids_that_do_not_fit_are_refused(ids: list[list[int]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        stored(spec((80, [A, B, C])), ids)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.sampled_from([A, B, C, D, E]), unique=True), min_size=1, max_size=8))
def test_any_sequence_of_updates_keeps_ids_distinct_small_and_stable(
    history: list[list[str]],
) -> None:
    previous: Service | None = None
    for addresses in history:
        current = spec((80, addresses))
        ids = backend_ids.assign(current, previous)[0]
        assert len(set(ids)) == len(ids)
        # Compact: the highest id is below the most backends the port ever had at once plus
        # those it lost and regained since (here: never above the five addresses used).
        assert all(0 <= i < 5 for i in ids)
        if previous is not None:
            before = dict(zip(previous.spec.ports[0].backends, previous.ids_of(0), strict=True))
            for backend, i in zip(current.ports[0].backends, ids, strict=True):
                assert before.get(backend, i) == i
        previous = stored(current, [ids])


def put(state: ClusterState, s: ServiceSpec) -> dict[str, Any]:
    answer = state.apply({"v": 1, "type": "service.put", "service": s.model_dump(mode="json")})
    assert answer["ok"], answer
    return answer["value"]["service"]


def test_the_state_stores_ids_answers_them_and_restores_them() -> None:
    state = ClusterState()
    pool = {"name": "p", "addresses": ["192.0.2.0/29"], "default": True}
    assert state.apply({"v": 1, "type": "pool.put", "pool": pool})["ok"]
    assert put(state, spec((80, [A, B, C])))["backend_ids"] == [[0, 1, 2]]
    assert put(state, spec((80, [C, D])))["backend_ids"] == [[2, 0]]
    assert state.services["c/ns/web"].backend_ids == [[2, 0]]
    restored = ClusterState.from_data(state.to_data())
    assert restored.services["c/ns/web"].backend_ids == [[2, 0]]
    assert restored == state
