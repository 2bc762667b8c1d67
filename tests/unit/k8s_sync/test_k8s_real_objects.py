"""The translation tables again, on objects as a real API server returns them.

The other tables build minimal objects; these start from `tests.support.real_objects` (managed
fields, defaulted fields, null lists, conditions of every type, unnamed ports) so that what a
real cluster adds cannot break what the minimal objects pass.
"""

from __future__ import annotations

from typing import Any

import pytest

from k8s_sync.translate import Options, TranslationError, translate, wanted
from tests.support.real_objects import (
    AUTOSCALER_TAINT,
    endpoint,
    endpoint_slice,
    metallb_service,
    node,
    service,
)

OPTS = Options(cluster="prod")
PODS = Options(cluster="prod", backends="pods")
NODES = [
    node("k1", "198.51.100.11", "2001:db8:5::11"),
    node("k2", "198.51.100.12", "2001:db8:5::12"),
    node("k3", "198.51.100.13", ready="Unknown"),  # the kubelet stopped posting
    node("k4", "198.51.100.14", taints=[AUTOSCALER_TAINT]),  # being scaled away
    node(
        "k5",
        "198.51.100.15",
        labels={"node.kubernetes.io/exclude-from-external-load-balancers": "true"},
    ),
    node("k6", "198.51.100.16", ready="False"),
    # A control-plane node with its usual taint is a backend like any other.
    node(
        "k7",
        "198.51.100.17",
        taints=[{"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane"}],
        labels={"node-role.kubernetes.io/control-plane": ""},
    ),
]
ON_K1_K2 = [endpoint_slice([endpoint("10.244.1.5", "k1"), endpoint("10.244.2.5", "k2")])]


def backends(services: list[Any], index: int = 0) -> list[tuple[str, int]]:
    return [(str(b.address), b.port) for b in services[index].ports[0].backends]


@pytest.mark.parametrize(
    ("obj", "slices", "options", "expected"),
    [
        # Cluster policy: every Ready node not excluded nor being deleted, at the nodePort.
        (
            service(),
            ON_K1_K2,
            OPTS,
            [("198.51.100.11", 31380), ("198.51.100.12", 31380), ("198.51.100.17", 31380)],
        ),
        # Local: only the nodes with a ready endpoint.
        (
            service(externalTrafficPolicy="Local", healthCheckNodePort=32001),
            [endpoint_slice([endpoint("10.244.2.5", "k2"), endpoint("10.244.3.5", "k3")])],
            OPTS,
            [("198.51.100.12", 31380)],
        ),
        # The server's `"endpoints": null` for a Service with no pods: no backend, no crash.
        (
            service(externalTrafficPolicy="Local", healthCheckNodePort=32001),
            [endpoint_slice(None)],
            OPTS,
            [],
        ),
        # A rollout's last old pods, terminating but serving, keep the traffic.
        (
            service(externalTrafficPolicy="Local", healthCheckNodePort=32001),
            [
                endpoint_slice(
                    [
                        endpoint("10.244.1.5", "k1", ready=False, terminating=True),
                        endpoint("10.244.2.9", "k2", ready=False),  # starting, not serving
                    ]
                )
            ],
            OPTS,
            [("198.51.100.11", 31380)],
        ),
        # Pods as backends, an unnamed port: absent in the Service, "" in the slice.
        (
            service(ports=[{"nodePort": 31380, "port": 80, "protocol": "TCP", "targetPort": 8080}]),
            [
                endpoint_slice([endpoint("10.244.1.5", "k1")], port_name=None),
                endpoint_slice(None, name="web-empty"),
                endpoint_slice([], address_type="FQDN", name="web-fqdn"),
            ],
            PODS,
            [("10.244.1.5", 8080)],
        ),
        # No node ports allocated: pods still work.
        (
            service(
                allocateLoadBalancerNodePorts=False,
                ports=[{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            ),
            ON_K1_K2,
            PODS,
            [("10.244.1.5", 8080), ("10.244.2.5", 8080)],
        ),
    ],
)
def test_backends_of_real_objects(
    obj: dict[str, Any], slices: list[dict[str, Any]], options: Options, expected: list[Any]
) -> None:
    (spec,) = translate(obj, slices, NODES, options)
    assert backends([spec]) == expected


def test_no_node_ports_with_node_backends_names_the_field() -> None:
    obj = service(
        allocateLoadBalancerNodePorts=False,
        ports=[{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
    )
    with pytest.raises(TranslationError) as info:
        translate(obj, ON_K1_K2, NODES, OPTS)
    (problem,) = info.value.fields
    assert (problem["field"], problem["value"]) == ("spec.ports[0].nodePort", None)
    assert "allocateLoadBalancerNodePorts" in problem["message"]


def test_dual_stack_preferred_gives_a_spec_per_family_primary_first() -> None:
    obj = service(
        ipFamilies=["IPv6", "IPv4"],
        ipFamilyPolicy="PreferDualStack",
        clusterIPs=["fd00:10:96::7", "10.96.14.7"],
        clusterIP="fd00:10:96::7",
    )
    v6, v4 = translate(obj, ON_K1_K2, NODES, OPTS)
    assert (v6.id, v4.id) == ("prod/shop/web:ipv6", "prod/shop/web:ipv4")
    # Only k1 and k2 have an IPv6 address; k7 is a backend of the IPv4 VIP only.
    assert backends([v6]) == [("2001:db8:5::11", 31380), ("2001:db8:5::12", 31380)]
    assert len(backends([v4])) == 3


@pytest.mark.parametrize(
    ("obj", "options", "expected"),
    [
        (service(), OPTS, True),
        (service(type="ClusterIP", loadBalancerClass=None), OPTS, False),
        (service(type="NodePort"), OPTS, False),
        (metallb_service(), OPTS, False),
        (metallb_service(), Options("prod", include_unclassed=True), True),
        (service(loadBalancerClass="io.cilium/l2-announcer"), OPTS, False),
    ],
)
def test_which_real_services_are_ours(
    obj: dict[str, Any], options: Options, expected: bool
) -> None:
    assert wanted(obj, options) is expected


def test_a_metallb_address_in_the_status_is_preferred_not_pinned() -> None:
    (spec,) = translate(metallb_service("192.0.2.40"), ON_K1_K2, NODES, OPTS)
    assert (spec.vip, str(spec.prefer_vip)) == (None, "192.0.2.40")


def test_an_asked_address_wins_over_the_status() -> None:
    obj = metallb_service("192.0.2.40")
    obj["metadata"]["annotations"]["metallb.io/loadBalancerIPs"] = "192.0.2.41"
    (spec,) = translate(obj, ON_K1_K2, NODES, OPTS)
    assert (str(spec.vip), spec.prefer_vip) == ("192.0.2.41", None)


@pytest.mark.parametrize(
    ("ingress", "expected"),
    [
        ([{"ip": "192.0.2.40", "ipMode": "Proxy"}], {"ipv4": "192.0.2.40"}),
        (
            [{"ip": "2001:db8::40"}, {"ip": "192.0.2.40"}],
            {"ipv4": "192.0.2.40", "ipv6": "2001:db8::40"},
        ),
        ([{"hostname": "lb-1234.elb.example"}], {}),  # a cloud load balancer's
        ([{"ip": "not an address"}, {"ip": "224.0.0.1"}, {"ip": "fe80::1%eth0"}], {}),
        (None, {}),
    ],
)
def test_what_a_status_shows_is_read_per_family_and_garbage_passed_over(
    ingress: Any, expected: dict[str, str]
) -> None:
    obj = metallb_service(ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack")
    obj["status"] = {"loadBalancer": {"ingress": ingress}}
    specs = translate(obj, ON_K1_K2, NODES, OPTS)
    shown = {s.family(): str(s.prefer_vip) for s in specs if s.prefer_vip is not None}
    assert shown == expected


def test_session_affinity_with_its_defaulted_timeout_is_source_affinity() -> None:
    obj = service(
        sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10800}}
    )
    (spec,) = translate(obj, ON_K1_K2, NODES, OPTS)
    assert spec.affinity == "source"
