"""Kubernetes to a working VIP, end to end in the lab.

The lab's backends play Kubernetes nodes (their HTTP server is both the NodePort and the
health check node port). The test API server and the sync run inside the client namespace, so
the sync reaches the appliance's API like an operator's sidecar would. A Service created in the
API server becomes a VIP the client reaches; under the Local policy, a node whose pods go away
leaves the backends. The Service names the node that answers for its VIP, and a kill -9 of that
node is a failover Event on the Service and a new name there.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.client import ApiClient
from appliance.lab import topology
from appliance.lab.bench_k8s import k8s_node
from appliance.lab.k8s_api import FakeApiServer
from appliance.lab.netlab import NetLab
from appliance.lab.outage import backends_seen, outages, summary_line
from appliance.lab.served import ServedApp
from k8s_sync.owners import ANNOTATION
from k8s_sync.syncer import Syncer
from k8s_sync.translate import Options
from tests.lab.labkit import MakeLab, wait_for
from tests.lab.test_lab_dataplane import probe

pytestmark = pytest.mark.timeout(180)


def endpoints(nodes: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": [f"10.9.0.{i}"], "nodeName": n, "conditions": {"ready": True}}
            for i, n in enumerate(nodes, 1)
        ],
    }


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "type": "LoadBalancer",
        "loadBalancerClass": "raftlb.io/lb",
        "externalTrafficPolicy": "Local",
        "healthCheckNodePort": topology.BACKEND_HTTP_PORT,
        "ipFamilies": ["IPv4"],
        "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "nodePort": topology.BACKEND_HTTP_PORT}
        ],
    },
}


@contextlib.contextmanager
def synced_lab(
    lab: NetLab, via: str, **kwargs: Any
) -> Iterator[tuple[FakeApiServer, list[topology.Host]]]:
    """A test API server with the lab's backends as Nodes and a slice for `web` on both, and a
    sync talking to the appliance through node `via`; all of it in the client namespace."""
    pool = {"addresses": [topology.L2_VIPS4], "default": True}
    assert lab.api(via, "PUT", "/v1/pools/lan", pool) is not None
    backends = lab.plan.of_kind("backend")
    api = FakeApiServer()
    for host in backends:
        api.put("nodes", k8s_node(host.name, str(host.ipv4)))
    api.put("endpointslices", endpoints([h.name for h in backends]))

    inside = lab.in_ns("client")  # the API server and the sync live in the client namespace
    served = ServedApp(api.app())
    inside.run(served.__enter__)
    stop = threading.Event()
    appliance = ApiClient(lab.api_url(via), lab.token())
    syncer = Syncer.for_url(served.url, appliance, Options("lab"), resync=5, **kwargs)
    running = inside.submit(syncer.run, stop)
    try:
        yield api, backends
    finally:
        stop.set()
        syncer.services.stop()
        running.result(timeout=30)
        inside.run(served.__exit__, None, None, None)
        inside.close()
        appliance.close()


def ingress(api: FakeApiServer) -> str | None:
    status = api.objects["services"]["shop/web"].get("status") or {}
    found = (status.get("loadBalancer") or {}).get("ingress") or []
    return str(found[0]["ip"]) if found else None


def shown_owner(api: FakeApiServer) -> str | None:
    metadata = api.objects["services"]["shop/web"].get("metadata") or {}
    return (metadata.get("annotations") or {}).get(ANNOTATION)


def test_a_service_becomes_a_vip_and_local_policy_follows_the_pods(make_lab: MakeLab) -> None:
    lab = make_lab()
    leader = lab.wait_leader()
    with synced_lab(lab, leader) as (api, (b1, b2)):
        api.call(api.put, "services", SERVICE)
        vip = wait_for(lambda: ingress(api), 30.0, "the VIP in the Service's status")
        samples = probe(lab, vip, 2.0, "k8s-both")
        assert not outages(samples), summary_line(samples)
        assert set(backends_seen(samples)) == {b1.name, b2.name}

        # The pods leave b2: under the Local policy b2 is no backend any more.
        api.call(api.put, "endpointslices", endpoints([b1.name]))

        def only_b1() -> bool:
            found = lab.api(leader, "GET", "/v1/services/lab/shop/web:ipv4") or {}
            ports = (found.get("spec") or {}).get("ports") or [{}]
            return [b["address"] for b in ports[0].get("backends", [])] == [str(b1.ipv4)]

        wait_for(lambda: only_b1() or None, 30.0, f"{b2.name} to leave the backends")
        after = probe(lab, vip, 1.5, "k8s-b1")
        assert not outages(after), summary_line(after)
        assert set(backends_seen(after)) == {b1.name}


def test_the_service_names_its_vips_node_and_a_killed_owner_is_a_failover_event(
    make_lab: MakeLab,
) -> None:
    lab = make_lab()
    lab.wait_leader()
    # The sync talks to n1, drained so that the VIP lives elsewhere: the owner's kill -9 must
    # not take the sync's appliance away with it.
    via, *others = lab.node_names()
    assert lab.api(via, "POST", f"/v1/nodes/{via}/drain", {}) is not None
    with synced_lab(lab, via, owner_interval=0.5) as (api, _):
        api.call(api.put, "services", SERVICE)
        vip = wait_for(lambda: ingress(api), 30.0, "the VIP in the Service's status")
        shown = wait_for(lambda: shown_owner(api), 30.0, f"{ANNOTATION} on the Service")
        address, owner = shown.split("=")
        assert address == vip and owner in others, shown
        (heir,) = set(others) - {owner}
        assert not outages(probe(lab, vip, 1.0, "k8s-owner"))

        lab.crash(owner, "kill")
        wait_for(
            lambda: shown_owner(api) == f"{vip}={heir}" or None, 30.0, f"{heir} on the Service"
        )
        events = wait_for(
            lambda: [e for e in api.events if e["reason"] == "VIPFailover"] or None,
            30.0,
            "a VIPFailover Event",
        )
        (event,) = events
        assert event["type"] == "Warning"
        assert event["involvedObject"]["name"] == "web", event
        assert event["message"].startswith(f"VIP {vip} moved {owner} -> {heir}: "), event
        assert re.search(rf"{owner} silent for \d+\.\d\d s", event["message"]), event
        assert not [e for e in api.events if e["reason"] == "VIPMoved"], api.events
        assert not outages(probe(lab, vip, 1.0, "k8s-heir"))
