"""Typed commands: what callers build is what every node parses back from the log."""

from __future__ import annotations

import pytest

from appliance.model import AllocationRequest, LeaseRenewal, MemberReport, Pool, ServiceSpec
from raft.commands import (
    COMMAND_CLASSES,
    KNOWN_TYPES,
    Allocate,
    AssignVips,
    Batch,
    Command,
    CommandError,
    DeletePool,
    DeleteService,
    Placement,
    PutPool,
    PutService,
    Release,
    ReleasedVips,
    RenewLease,
    ReportMember,
    SetDrain,
    batch,
    encode,
    parse_command,
)

POOL = Pool(name="lan", addresses=["192.0.2.0/28"], default=True)
BACKEND = {"address": "198.51.100.7", "port": 8080}
PORT = {"port": 80, "backends": [BACKEND]}
SERVICE = ServiceSpec.model_validate({"id": "k/ns/web", "ports": [PORT]})
EXAMPLES: list[Command] = [
    PutPool(pool=POOL),
    DeletePool(name="lan"),
    PutService(service=SERVICE),
    DeleteService(id="k/ns/web"),
    Allocate(request=AllocationRequest(owner="k/ns/web")),
    Release(owner="k/ns/web"),
    ReportMember(
        report=MemberReport(
            node="n1",
            raft_address="192.0.2.1:7000",
            api_url="https://192.0.2.1:8443",
            version="1",
            started_at=1.0,
            reported_at=2.0,
        )
    ),
    RenewLease(renewal=LeaseRenewal(node="n1", incarnation=1, seq=1, sent_at=1.0)),
    AssignVips(placements={"192.0.2.1": Placement(node="n2", reason="new")}, at=1.0),
    ReleasedVips(node="n1", vips=["192.0.2.1"]),
    SetDrain(node="n1", drained=True),
    batch([POOL], [SERVICE], ["k/ns/old"]),
]


def test_every_command_class_has_an_example_and_a_known_type() -> None:
    assert {type(c) for c in EXAMPLES} == set(COMMAND_CLASSES)
    assert {encode(c)["type"] for c in EXAMPLES} == KNOWN_TYPES


@pytest.mark.parametrize("command", EXAMPLES, ids=lambda c: encode(c)["type"])
def test_encoded_commands_parse_back_to_the_same_value(command: Command) -> None:
    raw = encode(command)
    assert raw["v"] == 1
    assert parse_command(raw) == command


def test_the_batch_builder_orders_pools_services_deletes_and_tolerates_gone_deletes() -> None:
    built = batch([POOL], [SERVICE], ["k/ns/old"])
    assert isinstance(built, Batch)
    assert [type(c) for c in built.commands] == [PutPool, PutService, DeleteService]
    last = built.commands[-1]
    assert isinstance(last, DeleteService) and last.missing_ok


def test_an_unknown_type_is_refused_as_unsupported_everywhere() -> None:
    with pytest.raises(CommandError) as caught:
        parse_command({"v": 1, "type": "pool.rename", "name": "lan"})
    assert caught.value.code == "unsupported"
