"""The sync's writes: split to the API's limits, and one refused item never holds back the rest
of its batch."""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import replace

from appliance.apierror import ApiError
from appliance.bodies import ApplyAnswer
from appliance.limits import APPLY_MAX_BYTES, APPLY_MAX_ITEMS
from appliance.model import Service, ServiceSpec
from k8s_sync.plan import Plan
from k8s_sync.syncer import WorkQueue
from k8s_sync.writer import Writer, batches, items_of


def spec(i: int, backends: int = 1) -> ServiceSpec:
    return ServiceSpec(
        id=f"prod/ns/s{i}:ipv4",
        ports=[
            {
                "port": 80,
                "backends": [
                    {"address": f"198.51.100.{b % 250 + 1}", "port": 30000 + b}
                    for b in range(backends)
                ],
            }
        ],
    )


def test_batches_respect_the_item_and_byte_limits() -> None:
    plans = [(f"ns/s{i}", Plan(puts=[spec(i)])) for i in range(2 * APPLY_MAX_ITEMS + 3)]
    sizes = [len(b) for b in batches(items_of(plans))]
    assert sizes == [APPLY_MAX_ITEMS, APPLY_MAX_ITEMS, 3]
    (one,) = items_of([("ns/big", Plan(puts=[spec(0, backends=300)]))])
    assert one.size >= len(spec(0, backends=300).model_dump_json())
    big = [replace(one, key=f"ns/s{i}", size=one.size * 5) for i in range(40)]
    found = list(batches(big))
    assert all(sum(item.size for item in b) <= APPLY_MAX_BYTES for b in found)
    assert sum(len(b) for b in found) == 40 and len(found) > 1


class FakeAppliance:
    """Refuses a batch holding a spec of s13 (pool exhausted), and that spec alone."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def _service(self, s: ServiceSpec, n: int) -> Service:
        return Service(spec=s, address=ipaddress.ip_address(f"192.0.2.{n}"))

    def apply(self, services: list[ServiceSpec], delete_services: list[str]) -> ApplyAnswer:
        self.calls.append(("apply", len(services) + len(delete_services)))
        if any(s.id.startswith("prod/ns/s13:") for s in services):
            raise ApiError(409, "exhausted", "item 3: pool 'lan' has no free ipv4 address")
        results = [{"service": self._service(s, 10).model_dump(mode="json")} for s in services]
        deleted = [{"deleted": d} for d in delete_services]
        return ApplyAnswer.model_validate({"results": results + deleted})

    def put_service(self, s: ServiceSpec) -> Service:
        self.calls.append(("put", 1))
        if s.id.startswith("prod/ns/s13:"):
            raise ApiError(409, "exhausted", "pool 'lan' has no free ipv4 address")
        return self._service(s, 20)

    def delete_service(self, sid: str) -> None:
        self.calls.append(("delete", 1))
        raise ApiError(404, "not_found", f"service {sid!r} does not exist")


def test_a_refused_item_is_written_alone_the_others_go_through() -> None:
    appliance = FakeAppliance()
    plans = [(f"ns/s{i}", Plan(puts=[spec(i)])) for i in range(10, 20)]
    plans.append(("ns/gone", Plan(deletes=["prod/ns/gone:ipv4"])))
    outcomes = Writer(appliance).write(plans)  # type: ignore[arg-type]
    assert outcomes["ns/s13"].refused == [
        ("prod/ns/s13:ipv4", "pool 'lan' has no free ipv4 address")
    ]
    assert all(
        set(outcomes[f"ns/s{i}"].applied) == {f"prod/ns/s{i}:ipv4"}
        for i in range(10, 20)
        if i != 13
    )
    assert outcomes["ns/gone"].deleted == ["prod/ns/gone:ipv4"]  # already gone counts as done
    assert appliance.calls[0] == ("apply", 11)
    assert [c for c, _ in appliance.calls[1:]] == ["put"] * 10 + ["delete"]


def test_get_many_takes_every_ready_key_once() -> None:
    queue = WorkQueue()
    for key in ("a", "b", "c", "b"):
        queue.add(key)
    queue.add("later", delay=60)
    stop = threading.Event()
    got = queue.get_many(stop, limit=10)
    assert sorted(got) == ["a", "b", "c"]
    queue.add("a")  # busy: not handed out again until done
    stop.set()
    assert queue.get_many(stop, limit=10) == []
