"""Kubernetes Service + EndpointSlices + Nodes -> ServiceSpecs: the translation tables."""

from __future__ import annotations

from typing import Any

import pytest

from k8s_sync.translate import (
    EXCLUDE_LABEL,
    Options,
    TranslationError,
    translate,
    wanted,
)

OPTS = Options(cluster="prod")


def service(
    name: str = "web",
    policy: str = "Cluster",
    ports: list[dict[str, Any]] | None = None,
    families: list[str] | None = None,
    annotations: dict[str, str] | None = None,
    klass: str | None = "raftlb.io/lb",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": "u-1",
            "annotations": annotations or {},
        },
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": klass,
            "externalTrafficPolicy": policy,
            "ipFamilies": families or ["IPv4"],
            "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
            **spec,
        },
    }


def node(name: str, n: int, ready: bool = True, excluded: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {EXCLUDE_LABEL: ""} if excluded else {}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": f"198.51.100.{n}"},
                {"type": "InternalIP", "address": f"2001:db8:5::{n}"},
            ],
        },
    }


NODES = [node("k1", 1), node("k2", 2), node("k3", 3, ready=False), node("k4", 4, excluded=True)]


def endpoint_slice(family: str, endpoints: list[tuple[str, str, bool | None]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": family,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [a], "nodeName": n, "conditions": {} if r is None else {"ready": r}}
            for a, n, r in endpoints
        ],
    }


def backends(spec: Any, index: int = 0) -> list[tuple[str, int, str | None]]:
    return [(str(b.address), b.port, b.node) for b in spec.ports[index].backends]


def test_cluster_policy_uses_every_ready_not_excluded_node_at_its_node_port() -> None:
    (spec,) = translate(service(), [], NODES, OPTS)
    assert spec.id == "prod/shop/web:ipv4"
    assert str(spec.traffic_policy) == "cluster"
    assert backends(spec) == [("198.51.100.1", 30080, "k1"), ("198.51.100.2", 30080, "k2")]


def test_a_node_address_that_cannot_be_a_backend_is_skipped() -> None:
    """Zoned, link-local, multicast or non-text addresses are not backends, and do not make
    the Service fail: the node's next address (or its ExternalIP) is used."""
    odd = node("k3", 3)
    odd["status"]["addresses"] = [
        {"type": "InternalIP", "address": "169.254.0.3"},
        {"type": "InternalIP", "address": "fe80::3%eth0"},
        {"type": "InternalIP", "address": 3325256707},
        {"type": "ExternalIP", "address": "203.0.113.3"},
    ]
    (spec,) = translate(service(), [], [*NODES, odd], OPTS)
    assert ("203.0.113.3", 30080, "k3") in backends(spec)


def test_local_policy_uses_nodes_with_a_ready_endpoint_and_the_health_check_port() -> None:
    slices = [
        endpoint_slice(
            "IPv4",
            [("10.0.0.1", "k2", True), ("10.0.0.2", "k1", False), ("10.0.0.3", "k3", True)],
        )
    ]
    (spec,) = translate(service(policy="Local", healthCheckNodePort=31999), slices, NODES, OPTS)
    assert str(spec.traffic_policy) == "local"
    assert spec.health_check_node_port == 31999
    # k1's endpoint is not ready; k3 has a ready one but is not Ready itself.
    assert backends(spec) == [("198.51.100.2", 30080, "k2")]


def test_local_policy_without_endpoints_has_no_backends() -> None:
    (spec,) = translate(service(policy="Local"), [], NODES, OPTS)
    assert backends(spec) == []


def test_a_missing_ready_condition_counts_as_ready() -> None:
    slices = [endpoint_slice("IPv4", [("10.0.0.1", "k1", None)])]
    (spec,) = translate(service(policy="Local"), slices, NODES, OPTS)
    assert backends(spec) == [("198.51.100.1", 30080, "k1")]


def test_several_ports_udp_and_client_ip_affinity() -> None:
    ports = [
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30054},
    ]
    (spec,) = translate(service(ports=ports, sessionAffinity="ClientIP"), [], NODES, OPTS)
    assert [(p.port, str(p.protocol)) for p in spec.ports] == [(53, "udp"), (53, "tcp")]
    assert [b.port for b in spec.ports[0].backends] == [30053, 30053]
    assert str(spec.affinity) == "source"


def test_dual_stack_gives_one_spec_per_family_with_that_familys_addresses() -> None:
    specs = translate(service(families=["IPv4", "IPv6"]), [], NODES, OPTS)
    assert [s.id for s in specs] == ["prod/shop/web:ipv4", "prod/shop/web:ipv6"]
    assert [str(s.ip_family) for s in specs] == ["ipv4", "ipv6"]
    assert backends(specs[1])[0] == ("2001:db8:5::1", 30080, "k1")


def test_annotations_pool_addresses_and_sharing_key() -> None:
    annotations = {
        "raftlb.io/pool": "public",
        "raftlb.io/addresses": "192.0.2.10, 2001:db8::10",
        "raftlb.io/sharing-key": "dns",
    }
    specs = translate(service(families=["IPv4", "IPv6"], annotations=annotations), [], NODES, OPTS)
    assert [(s.pool, str(s.vip), s.sharing_key) for s in specs] == [
        ("public", "192.0.2.10", "prod/dns"),
        ("public", "2001:db8::10", "prod/dns"),
    ]
    (legacy,) = translate(service(loadBalancerIP="192.0.2.11"), [], NODES, OPTS)
    assert str(legacy.vip) == "192.0.2.11"


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        (
            {"annotations": {"raftlb.io/addresses": "192.0.2.300"}},
            "metadata.annotations[raftlb.io/addresses]",
            "192.0.2.300",
        ),
        (
            {"annotations": {"raftlb.io/pool": "Not A Pool"}},
            "metadata.annotations[raftlb.io/pool]",
            "Not A Pool",
        ),
        (
            {"ports": [{"port": 80, "protocol": "SCTP", "nodePort": 30080}]},
            "spec.ports[0].protocol",
            "SCTP",
        ),
        ({"ports": [{"port": 80, "protocol": "TCP"}]}, "spec.ports[0].nodePort", None),
        # Anyone who may create a Service could have had the appliance announce any prefix.
        (
            {"annotations": {"raftlb.io/addresses": "2001:db8::7%x announce route 203.0.113.7"}},
            "metadata.annotations[raftlb.io/addresses]",
            "2001:db8::7%x announce route 203.0.113.7",
        ),
        (
            {"annotations": {"raftlb.io/addresses": "224.0.0.5"}},
            "metadata.annotations[raftlb.io/addresses]",
            "224.0.0.5",
        ),
        (
            {"annotations": {"raftlb.io/addresses": "127.0.0.1"}},
            "metadata.annotations[raftlb.io/addresses]",
            "127.0.0.1",
        ),
        # An IPv6 address asked for an IPv4-only Service: not quietly an IPv4 one.
        (
            {"annotations": {"raftlb.io/addresses": "2001:db8::10"}},
            "metadata.annotations[raftlb.io/addresses]",
            "2001:db8::10",
        ),
        (
            {"annotations": {"metallb.io/loadBalancerIPs": "2001:db8::10"}},
            "metadata.annotations[metallb.io/loadBalancerIPs]",
            "2001:db8::10",
        ),
        (
            {"annotations": {"metallb.universe.tf/address-pool": "Not A Pool"}},
            "metadata.annotations[metallb.universe.tf/address-pool]",
            "Not A Pool",
        ),
        # Two spellings that disagree: neither is guessed.
        (
            {"annotations": {"raftlb.io/pool": "a", "metallb.io/address-pool": "b"}},
            "metadata.annotations[raftlb.io/pool]",
            "a",
        ),
    ],
)
def test_bad_input_names_the_field_and_applies_nothing(
    change: dict[str, Any], field: str, value: Any
) -> None:
    with pytest.raises(TranslationError) as info:
        translate(service(**change), [], NODES, OPTS)
    assert (info.value.fields[0]["field"], info.value.fields[0]["value"]) == (field, value)


def test_class_filtering() -> None:
    assert wanted(service(), OPTS)
    assert not wanted(service(klass="other.example/lb"), OPTS)
    assert not wanted(service(klass=None), OPTS)
    assert wanted(service(klass=None), Options(cluster="prod", include_unclassed=True))
    cluster_ip = service()
    cluster_ip["spec"]["type"] = "ClusterIP"
    assert not wanted(cluster_ip, OPTS)


def test_pod_backends_use_ready_endpoints_at_the_slice_port() -> None:
    slices = [endpoint_slice("IPv4", [("10.0.0.1", "k1", True), ("10.0.0.2", "k2", False)])]
    (spec,) = translate(service(), slices, NODES, Options(cluster="prod", backends="pods"))
    assert backends(spec) == [("10.0.0.1", 8080, "k1")]


def endpoint(address: str, node_name: str, **conditions: bool) -> dict[str, Any]:
    return {"addresses": [address], "nodeName": node_name, "conditions": conditions}


def with_endpoints(*endpoints: dict[str, Any]) -> list[dict[str, Any]]:
    piece = endpoint_slice("IPv4", [])
    piece["endpoints"] = list(endpoints)
    return [piece]


def test_a_node_the_autoscaler_is_deleting_is_no_backend() -> None:
    leaving = node("k5", 5)
    leaving["spec"] = {
        "taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]
    }
    cordoned = node("k6", 6)
    cordoned["spec"] = {"unschedulable": True, "taints": [{"key": "other", "effect": "NoSchedule"}]}
    (spec,) = translate(service(), [], [*NODES, leaving, cordoned], OPTS)
    # k6 is only cordoned: it still forwards to pods elsewhere, as the cloud controllers keep it.
    assert [b[2] for b in backends(spec)] == ["k1", "k2", "k6"]


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        # None ready: the ones serving while they terminate keep the traffic (a rollout).
        (
            [
                endpoint("10.0.0.1", "k1", ready=False, serving=True, terminating=True),
                endpoint("10.0.0.2", "k2", ready=False, serving=False, terminating=True),
            ],
            [("10.0.0.1", 8080, "k1")],
        ),
        # One ready: the terminating ones are left, as kube-proxy does.
        (
            [
                endpoint("10.0.0.1", "k1", ready=False, serving=True, terminating=True),
                endpoint("10.0.0.3", "k2", ready=True, serving=True, terminating=False),
            ],
            [("10.0.0.3", 8080, "k2")],
        ),
        # Not ready and not terminating (starting, failing its probe): never a backend.
        ([endpoint("10.0.0.1", "k1", ready=False, serving=True)], []),
    ],
)
def test_terminating_endpoints_serve_only_when_none_is_ready(
    endpoints: list[dict[str, Any]], expected: list[tuple[str, int, str]]
) -> None:
    pods = Options(cluster="prod", backends="pods")
    (spec,) = translate(service(), with_endpoints(*endpoints), NODES, pods)
    assert backends(spec) == expected
    (local,) = translate(service(policy="Local"), with_endpoints(*endpoints), NODES, OPTS)
    assert [b[2] for b in backends(local)] == [node for _, _, node in expected]


@pytest.mark.parametrize("prefix", ["metallb.io", "metallb.universe.tf"])
def test_metallb_annotations_move_unchanged(prefix: str) -> None:
    annotations = {
        f"{prefix}/address-pool": "public",
        f"{prefix}/loadBalancerIPs": "192.0.2.10,2001:db8::10",
        f"{prefix}/allow-shared-ip": "dns",
    }
    specs = translate(service(families=["IPv4", "IPv6"], annotations=annotations), [], NODES, OPTS)
    assert [(s.pool, str(s.vip), s.sharing_key) for s in specs] == [
        ("public", "192.0.2.10", "prod/dns"),
        ("public", "2001:db8::10", "prod/dns"),
    ]
    # Ours and MetalLB's saying the same thing is no conflict.
    both = {**annotations, "raftlb.io/pool": "public"}
    assert translate(service(families=["IPv4", "IPv6"], annotations=both), [], NODES, OPTS)
