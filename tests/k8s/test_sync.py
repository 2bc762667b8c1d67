"""The sync end to end in one process: the real kubernetes client against the test API server,
the real appliance API (aiohttp app over the in-memory cluster) and its client."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from appliance.api.app import ApiContext, build_app
from appliance.client import ApiClient
from appliance.lab.k8s_api import FakeApiServer, write_kubeconfig
from appliance.lab.served import ServedApp
from appliance.metrics import Metrics
from appliance.model import Pool, ServiceSpec
from k8s_sync.syncer import Syncer
from k8s_sync.translate import EXCLUDE_LABEL, Options
from tests.support.fake_cluster import InMemoryCluster
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(90)
TOKEN = "sync-test-token-0123456789abcdef"


def k8s_service(name: str, port: int = 80, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "raftlb.io/lb",
            "externalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "nodePort": 30080}],
        },
    }


def k8s_node(name: str, n: int, excluded: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {EXCLUDE_LABEL: ""} if excluded else {}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": f"198.51.100.{n}"}],
        },
    }


@dataclass
class World:
    api: FakeApiServer
    k8s_url: str
    appliance: ApiClient
    k8s: ServedApp
    cluster: InMemoryCluster

    def syncer(
        self,
        cluster: str = "prod",
        event_interval: float = 300.0,
        owner_interval: float = 5.0,
        **options: Any,
    ) -> tuple[Syncer, threading.Event, threading.Thread]:
        syncer = Syncer.for_url(
            self.k8s_url,
            self.appliance,
            Options(cluster=cluster, **options),
            resync=2.0,
            event_interval=event_interval,
            owner_interval=owner_interval,
        )
        stop = threading.Event()
        thread = threading.Thread(target=syncer.run, args=(stop,), daemon=True)
        thread.start()
        return syncer, stop, thread

    def spec(self, sid: str) -> Any:
        return next((s for s in self.appliance.services() if s.spec.id == sid), None)


@pytest.fixture
def world() -> Iterator[World]:
    cluster = InMemoryCluster("n1", {"n1": "127.0.0.1:7001"})
    ctx = ApiContext(
        cluster=cluster,
        metrics=Metrics(cluster),
        token=TOKEN,
        peers=cluster.peers,
        version="test",
        write_timeout=1.0,
    )
    api = FakeApiServer()
    k8s = ServedApp(api.app())
    with ServedApp(build_app(ctx)) as appliance_app, contextlib.ExitStack() as stack:
        stack.enter_context(k8s)
        appliance = ApiClient(appliance_app.url, TOKEN)
        appliance.put_pool(Pool(name="lan", addresses=["192.0.2.10-192.0.2.12"], default=True))
        api.call(api.put, "nodes", k8s_node("k1", 1))
        api.call(api.put, "nodes", k8s_node("k2", 2))
        yield World(api, k8s.url, appliance, k8s, cluster)
        appliance.close()


def test_services_follow_kubernetes_and_status_and_events_are_written(world: World) -> None:
    api = world.api
    _syncer, stop, thread = world.syncer()
    try:
        api.call(api.put, "services", k8s_service("web"))
        stored = until(lambda: world.spec("prod/shop/web:ipv4"), "the service in the appliance")
        assert [str(b.address) for b in stored.spec.ports[0].backends] == [
            "198.51.100.1",
            "198.51.100.2",
        ]
        until(lambda: api.patches, "a status patch")
        status = api.objects["services"]["shop/web"]["status"]["loadBalancer"]["ingress"]
        assert status == [{"ip": str(stored.address), "ipMode": "VIP"}]
        assert any(e["reason"] == "IPAllocated" for e in api.events)

        # A node is excluded: it leaves the backends.
        api.call(api.put, "nodes", k8s_node("k2", 2, excluded=True))
        until(
            lambda: (
                [str(b.address) for b in world.spec("prod/shop/web:ipv4").spec.ports[0].backends]
                == ["198.51.100.1"]
            ),
            "the excluded node to leave",
        )
        # The Service is deleted: its VIP is released.
        api.call(api.delete, "services", "shop/web")
        until(lambda: world.spec("prod/shop/web:ipv4") is None, "the release")
        assert any(e["reason"] == "IPReleased" for e in api.events)
    finally:
        stop.set()
        thread.join(10)


def test_at_start_orphans_of_this_cluster_go_and_other_clusters_stay(world: World) -> None:
    for sid in ("prod/shop/gone:ipv4", "staging/shop/web:ipv4"):
        world.appliance.put_service(
            ServiceSpec.model_validate({"id": sid, "ports": [{"port": 80}]})
        )
    _syncer, stop, thread = world.syncer()
    try:
        until(lambda: world.spec("prod/shop/gone:ipv4") is None, "the orphan to be removed")
        assert world.spec("staging/shop/web:ipv4") is not None
    finally:
        stop.set()
        thread.join(10)


def test_a_bad_annotation_is_an_event_and_changes_nothing(world: World) -> None:
    api = world.api
    _syncer, stop, thread = world.syncer()
    try:
        api.call(api.put, "services", k8s_service("web"))
        before = until(lambda: world.spec("prod/shop/web:ipv4"), "the service")
        api.call(api.put, "services", k8s_service("web", 443, **{"raftlb.io/pool": "No Such"}))
        until(
            lambda: any(e["reason"] == "InvalidConfiguration" for e in api.events),
            "an InvalidConfiguration event",
        )
        event = next(e for e in api.events if e["reason"] == "InvalidConfiguration")
        assert "metadata.annotations[raftlb.io/pool]" in event["message"]
        assert world.spec("prod/shop/web:ipv4") == before  # the old port 80 stays
    finally:
        stop.set()
        thread.join(10)


def test_two_replicas_at_once_agree(world: World) -> None:
    api = world.api
    first = world.syncer()
    second = world.syncer()
    try:
        for name in ("a", "b", "c"):
            api.call(api.put, "services", k8s_service(name))
        until(
            lambda: (
                len([s for s in world.appliance.services() if s.spec.id.startswith("prod/")]) == 3
            ),
            "three services",
        )
        time.sleep(2.5)  # a full resync of both
        addresses = sorted(str(s.address) for s in world.appliance.services())
        assert addresses == ["192.0.2.10", "192.0.2.11", "192.0.2.12"]  # no double allocation
        for name in ("a", "b", "c"):
            ingress = api.objects["services"][f"shop/{name}"]["status"]["loadBalancer"]["ingress"]
            assert len(ingress) == 1
    finally:
        for _, stop, thread in (first, second):
            stop.set()
            thread.join(10)


def test_the_command_syncs_serves_health_and_metrics_and_stops_on_sigterm(
    world: World, tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", world.k8s_url)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [sys.executable, "-m", "appliance.cli", "k8s-sync", "--kubeconfig", str(kubeconfig)]
    argv += ["--api", world.appliance.base_url, "--token-file", str(token)]
    argv += ["--cluster-name", "prod", "--listen", f"127.0.0.1:{port}", "--resync", "2"]
    world.api.call(world.api.put, "services", k8s_service("web"))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        until(lambda: world.spec("prod/shop/web:ipv4"), "the service from the command")
        health = until(lambda: _get(f"http://127.0.0.1:{port}/healthz"), "/healthz")
        assert health == (200, "ok\n")
        status, metrics = _get(f"http://127.0.0.1:{port}/metrics") or (0, "")
        assert status == 200 and 'raftlb_k8s_informer_synced{kind="services"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _get(url: str) -> tuple[int, str] | None:
    try:
        resp = requests.get(url, timeout=2)
    except requests.RequestException:
        return None
    return resp.status_code, resp.text


def test_the_api_server_going_away_keeps_the_vips_and_the_sync_recovers(world: World) -> None:
    api = world.api
    port = int(world.k8s_url.rsplit(":", 1)[1])
    syncer, stop, thread = world.syncer()
    try:
        api.call(api.put, "services", k8s_service("web"))
        until(lambda: world.spec("prod/shop/web:ipv4"), "the service")
        world.k8s.__exit__(None, None, None)  # the Kubernetes API is down
        until(lambda: syncer.services.failures >= 1, "the sync to notice")
        time.sleep(1.0)
        assert world.spec("prod/shop/web:ipv4") is not None  # the appliance keeps serving it
        with ServedApp(api.app(), port=port):  # back, same address, same history
            api.call(api.put, "services", k8s_service("api"))
            until(lambda: world.spec("prod/shop/api:ipv4"), "a change made after the outage", 40)
            assert world.spec("prod/shop/web:ipv4") is not None
    finally:
        stop.set()
        thread.join(10)


def test_an_exhausted_pool_is_a_failed_event_with_the_reason(world: World) -> None:
    api = world.api
    _syncer, stop, thread = world.syncer()
    try:
        for name in ("a", "b", "c", "d"):  # the pool holds three addresses
            api.call(api.put, "services", k8s_service(name))
        until(
            lambda: any(e["reason"] == "AllocationFailed" for e in api.events),
            "an AllocationFailed event",
        )
        event = next(e for e in api.events if e["reason"] == "AllocationFailed")
        assert event["type"] == "Warning"
        assert "exhausted" in event["message"] or "no free" in event["message"], event
        served = [s for s in world.appliance.services() if s.spec.id.startswith("prod/")]
        assert len(served) == 3
    finally:
        stop.set()
        thread.join(10)


def test_a_cold_start_lists_the_appliance_once_and_a_change_behind_its_back_is_repaired(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 Services at start: one listing of the appliance serves every batch (a listing per
    batch parsed every stored service each time); a service deleted from the appliance by hand
    comes back at the next full resync."""
    api = world.api
    world.appliance.put_pool(Pool(name="lan", addresses=["203.0.113.0/26"], default=True))
    for n in range(40):
        api.call(api.put, "services", k8s_service(f"s{n}"))
    listings = []
    each = world.appliance.each_service

    def counted(*args: Any, **kwargs: Any) -> Any:
        listings.append(time.monotonic())
        return each(*args, **kwargs)

    monkeypatch.setattr(world.appliance, "each_service", counted)
    syncer, stop, thread = world.syncer()  # resync every 2 s
    started = time.monotonic()
    try:

        def statuses() -> int:
            return sum(
                1
                for obj in api.objects["services"].values()
                if (obj.get("status") or {}).get("loadBalancer", {}).get("ingress")
            )

        until(lambda: statuses() == 40, "40 statuses")
        synced = time.monotonic()
        # One listing at start, plus one per full resync (every 2 s) while it ran.
        assert len(listings) <= 1 + int((synced - started) / 2.0) + 1, listings
        world.appliance.delete_service("prod/shop/s7:ipv4")
        until(lambda: world.spec("prod/shop/s7:ipv4"), "s7 back after a resync", timeout=20)
        assert syncer.failures == 0
    finally:
        stop.set()
        thread.join(10)
