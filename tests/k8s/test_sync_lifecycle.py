"""A Service's life as a real cluster lives it, end to end against the test API server: its
deletion held by the finalizer until the VIP is released (also when the sync was down), a
Service that stops being ours giving its address up, terminating endpoints kept during a
rollout, and a misconfigured Service getting one Event with a count, not a flood."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from appliance.model import ChangeReason
from k8s_sync.owners import ANNOTATION
from k8s_sync.syncer import FINALIZER, Syncer
from raft.commands import AssignVips, Placement, encode
from tests.k8s.test_sync import World, k8s_service, until, world

pytestmark = pytest.mark.timeout(90)
__all__ = ["world"]  # the fixture, imported to be found by pytest
KEY = "shop/web"
SID = "prod/shop/web:ipv4"


def stopped(run: tuple[Syncer, threading.Event, threading.Thread]) -> None:
    _, stop, thread = run
    stop.set()
    thread.join(10)


def service_object(w: World) -> dict[str, Any] | None:
    return w.api.objects["services"].get(KEY)


def ingress(w: World) -> list[dict[str, Any]]:
    obj = service_object(w) or {}
    return ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []


def finalizers(w: World) -> list[str]:
    return (service_object(w) or {}).get("metadata", {}).get("finalizers") or []


def test_a_deletion_waits_for_the_release_even_with_the_sync_down(world: World) -> None:
    api = world.api
    run = world.syncer()
    try:
        api.call(api.put, "services", k8s_service("web"))
        until(lambda: world.spec(SID) and FINALIZER in finalizers(world), "VIP and finalizer")
    finally:
        stopped(run)
    # The sync is down while the Service is deleted: Terminating, and its VIP still given.
    api.call(api.delete, "services", KEY)
    obj = service_object(world)
    assert obj is not None and obj["metadata"]["deletionTimestamp"]
    assert world.spec(SID) is not None
    run = world.syncer()
    try:
        until(lambda: world.spec(SID) is None, "the release once the sync is back")
        until(lambda: service_object(world) is None, "the Service gone, its finalizer removed")
        assert any(e["reason"] == "IPReleased" for e in api.events)
        # The release came before the finalizer went: the patch removing it is the last.
        assert api.service_patches[-1][1] == {
            "metadata": {"$deleteFromPrimitiveList/finalizers": [FINALIZER]}
        }
    finally:
        stopped(run)


def test_without_the_finalizer_a_deleted_service_goes_at_once(world: World) -> None:
    api = world.api
    run = world.syncer(finalizer=False)
    try:
        api.call(api.put, "services", k8s_service("web"))
        until(lambda: ingress(world), "the status")
        assert finalizers(world) == [] and api.service_patches == []
        api.call(api.delete, "services", KEY)
        assert service_object(world) is None
        until(lambda: world.spec(SID) is None, "the release")
    finally:
        stopped(run)


@pytest.mark.parametrize("change", ["type", "class"])
def test_a_service_no_longer_ours_gives_its_address_up(world: World, change: str) -> None:
    api = world.api
    run = world.syncer()
    try:
        api.call(api.put, "services", k8s_service("web"))
        until(lambda: ingress(world) and FINALIZER in finalizers(world), "status and finalizer")
        ours = ingress(world)[0]["ip"]
        obj = dict(service_object(world) or {})
        spec = dict(obj["spec"])
        if change == "type":
            spec["type"] = "ClusterIP"
            spec.pop("loadBalancerClass")
            others: list[dict[str, Any]] = []
        else:
            spec["loadBalancerClass"] = "other.example/lb"
            # The other controller was quick: its address is already there, and stays.
            others = [{"ip": "203.0.113.77"}]
            obj["status"] = {"loadBalancer": {"ingress": [*ingress(world), *others]}}
        api.call(api.put, "services", {**obj, "spec": spec})
        until(lambda: world.spec(SID) is None, "the release")
        until(lambda: ingress(world) == others, f"only {others} left in the status")
        until(lambda: FINALIZER not in finalizers(world), "the finalizer removed")
        assert all(i["ip"] != ours for i in ingress(world))
    finally:
        stopped(run)


def test_terminating_endpoints_keep_the_traffic_when_none_is_ready(world: World) -> None:
    api = world.api
    run = world.syncer(backends="pods")
    try:
        endpoints = [
            {"addresses": ["10.1.0.1"], "nodeName": "k1", "conditions": conditions}
            for conditions in ({"ready": False, "serving": True, "terminating": True},)
        ]
        api.call(api.put, "endpointslices", endpoint_slice(endpoints))
        api.call(api.put, "services", k8s_service("web"))
        stored = until(lambda: world.spec(SID), "the service")
        assert [(str(b.address), b.port) for b in stored.spec.ports[0].backends] == [
            ("10.1.0.1", 8080)
        ]
        ready = {"addresses": ["10.1.0.2"], "nodeName": "k2", "conditions": {"ready": True}}
        api.call(api.put, "endpointslices", endpoint_slice([*endpoints, ready]))
        until(
            lambda: (
                [str(b.address) for b in world.spec(SID).spec.ports[0].backends] == ["10.1.0.2"]
            ),
            "the ready endpoint alone once there is one",
        )
    finally:
        stopped(run)


def endpoint_slice(endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


@pytest.mark.parametrize("interval", [300.0, 0.0])
def test_a_misconfigured_service_gets_one_event_with_a_count(world: World, interval: float) -> None:
    api = world.api
    run = world.syncer(event_interval=interval)
    syncer = run[0]
    try:
        api.call(api.put, "services", k8s_service("web", **{"raftlb.io/pool": "No Such"}))

        def invalid() -> list[dict[str, Any]]:
            return [e for e in api.events if e["reason"] == "InvalidConfiguration"]

        until(invalid, "the first event")
        for _ in range(20):  # as every Node, slice and resync would
            syncer.reconcile(KEY)
        assert len(invalid()) == 1, "one Event, not one per reconcile"
        if interval:
            assert api.event_patches == []  # counted, written at most once per interval
        else:
            until(lambda: (invalid()[0].get("count") or 0) >= 21, "the count raised")
        # Another problem is news: a second Event at once.
        api.call(api.put, "services", k8s_service("web", **{"raftlb.io/pool": "Other Bad"}))
        until(lambda: len(invalid()) == 2, "an event for the new problem")
    finally:
        stopped(run)


def test_the_service_shows_where_its_vip_is_answered_and_a_failover_is_an_event(
    world: World,
) -> None:
    api = world.api
    run = world.syncer(owner_interval=0.2)

    def assign(address: str, node: str, reason: ChangeReason, dead_for: float | None) -> None:
        placement = Placement(node=node, reason=reason, dead_for=dead_for)
        command = AssignVips(placements={address: placement}, at=time.time())
        assert world.cluster.state.apply(encode(command))["ok"]

    def shown() -> str | None:
        obj = service_object(world) or {}
        return (obj.get("metadata", {}).get("annotations") or {}).get(ANNOTATION)

    try:
        api.call(api.put, "services", k8s_service("web"))
        address = str(until(lambda: world.spec(SID), "the service").address)
        assign(address, "n1", ChangeReason.NEW, None)
        until(lambda: shown() == f"{address}=n1", "the owner on the Service")
        assign(address, "n2", ChangeReason.DEAD, 0.84)
        until(lambda: shown() == f"{address}=n2", "the new owner on the Service")
        moved = until(
            lambda: [e for e in api.events if e["reason"] == "VIPFailover"], "a failover Event"
        )
        assert moved[0]["type"] == "Warning"
        assert moved[0]["message"] == (
            f"VIP {address} moved n1 -> n2: n1 stopped renewing, n1 silent for 0.84 s"
        )
    finally:
        stopped(run)


def test_services_moving_from_metallb_keep_their_addresses_unpinned(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MetalLB's Services (no class, their address in the status, no annotation): the sync in
    migration mode keeps each address that is free in the pool, gives the lowest free one to
    the Service whose address is not in it, and writes the statuses without a second PUT."""
    api = world.api
    shown = {"a": "192.0.2.12", "b": "192.0.2.11", "c": "203.0.113.5"}
    for name, address in shown.items():
        obj = k8s_service(name)
        del obj["spec"]["loadBalancerClass"]
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": address, "ipMode": "VIP"}]}}
        api.call(api.put, "services", obj)
    applied: list[str] = []
    apply, put = world.appliance.apply, world.appliance.put_service

    def counted_apply(**kwargs: Any) -> Any:
        applied.extend(spec.id for spec in kwargs.get("services", ()))
        return apply(**kwargs)

    def counted_put(spec: Any) -> Any:
        applied.append(spec.id)
        return put(spec)

    monkeypatch.setattr(world.appliance, "apply", counted_apply)
    monkeypatch.setattr(world.appliance, "put_service", counted_put)
    run = world.syncer(include_unclassed=True)
    try:

        def addresses() -> dict[str, str] | None:
            found = {n: world.spec(f"prod/shop/{n}:ipv4") for n in shown}
            if not all(found.values()):
                return None
            return {n: str(s.address) for n, s in found.items()}

        got = until(addresses, "the three Services in the appliance")
        assert got == {"a": "192.0.2.12", "b": "192.0.2.11", "c": "192.0.2.10"}
        assert all(world.spec(f"prod/shop/{n}:ipv4").spec.vip is None for n in shown)  # unpinned

        def status_of(name: str) -> list[str]:
            obj = api.objects["services"][f"shop/{name}"]
            return [i["ip"] for i in obj["status"]["loadBalancer"]["ingress"]]

        until(lambda: status_of("c") == ["192.0.2.10"], "c's status replaced")
        assert [status_of(n) for n in ("a", "b")] == [["192.0.2.12"], ["192.0.2.11"]]
        time.sleep(5)  # two full resyncs
        assert sorted(applied) == [f"prod/shop/{n}:ipv4" for n in sorted(shown)], applied
    finally:
        stopped(run)
