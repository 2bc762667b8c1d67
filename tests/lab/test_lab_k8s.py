"""Kubernetes to a working VIP, end to end in the lab.

The lab's backends play Kubernetes nodes (their HTTP server is both the NodePort and the
health check node port). The test API server and the sync run inside the client namespace, so
the sync reaches the appliance's API like an operator's sidecar would. A Service created in the
API server becomes a VIP the client reaches; under the Local policy, a node whose pods go away
leaves the backends.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from appliance.client import ApiClient
from appliance.lab import topology
from appliance.lab.bench_k8s import k8s_node
from appliance.lab.k8s_api import FakeApiServer
from appliance.lab.outage import backends_seen, outages, summary_line
from appliance.lab.served import ServedApp
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


def test_a_service_becomes_a_vip_and_local_policy_follows_the_pods(make_lab: MakeLab) -> None:
    lab = make_lab()
    leader = lab.wait_leader()
    pool = {"addresses": [topology.L2_VIPS4], "default": True}
    assert lab.api(leader, "PUT", "/v1/pools/lan", pool) is not None
    b1, b2 = lab.plan.of_kind("backend")
    api = FakeApiServer()
    for host in (b1, b2):
        api.put("nodes", k8s_node(host.name, str(host.ipv4)))
    api.put("endpointslices", endpoints([b1.name, b2.name]))

    inside = lab.in_ns("client")  # the API server and the sync live in the client namespace
    served = ServedApp(api.app())
    inside.run(served.__enter__)
    stop = threading.Event()
    appliance = ApiClient(lab.api_url(leader), lab.token())
    syncer = Syncer.for_url(served.url, appliance, Options("lab"), resync=5)
    running = inside.submit(syncer.run, stop)
    try:
        api.call(api.put, "services", SERVICE)

        def ingress() -> str | None:
            status = api.objects["services"]["shop/web"].get("status") or {}
            found = (status.get("loadBalancer") or {}).get("ingress") or []
            return str(found[0]["ip"]) if found else None

        vip = wait_for(ingress, 30.0, "the VIP in the Service's status")
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
    finally:
        stop.set()
        syncer.services.stop()
        running.result(timeout=30)
        inside.run(served.__exit__, None, None, None)
        inside.close()
        appliance.close()
