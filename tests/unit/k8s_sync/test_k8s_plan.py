"""The sync's plan: what changes in the appliance, and the status written back."""

from __future__ import annotations

import ipaddress

import pytest

from appliance.model import Service, ServiceSpec
from k8s_sync.plan import Stored, ingress_patch, plan


def spec(sid: str, port: int = 80) -> ServiceSpec:
    return ServiceSpec.model_validate({"id": sid, "ports": [{"port": port}]})


def stored(sid: str, address: str, port: int = 80) -> Stored:
    return Stored.of(Service(spec=spec(sid, port), address=ipaddress.ip_address(address)))


def test_puts_new_and_changed_deletes_gone_and_leaves_other_clusters_alone() -> None:
    desired = {
        "prod/a/new:ipv4": spec("prod/a/new:ipv4"),
        "prod/a/same:ipv4": spec("prod/a/same:ipv4"),
        "prod/a/changed:ipv4": spec("prod/a/changed:ipv4", 443),
    }
    existing = {
        "prod/a/same:ipv4": stored("prod/a/same:ipv4", "192.0.2.1"),
        "prod/a/changed:ipv4": stored("prod/a/changed:ipv4", "192.0.2.2"),
        "prod/a/gone:ipv4": stored("prod/a/gone:ipv4", "192.0.2.3"),
        "staging/a/other:ipv4": stored("staging/a/other:ipv4", "192.0.2.4"),
        "static/dns": stored("static/dns", "192.0.2.5"),
    }
    result = plan("prod", desired, existing)
    assert [s.id for s in result.puts] == ["prod/a/changed:ipv4", "prod/a/new:ipv4"]
    assert result.deletes == ["prod/a/gone:ipv4"]
    assert not plan(
        "prod",
        {"prod/a/same:ipv4": spec("prod/a/same:ipv4")},
        {"prod/a/same:ipv4": stored("prod/a/same:ipv4", "192.0.2.1")},
    )


def test_a_plan_never_touches_another_clusters_ids() -> None:
    with pytest.raises(ValueError, match="not of cluster"):
        plan("prod", {"staging/a/x:ipv4": spec("staging/a/x:ipv4")}, {})


def test_ingress_lists_each_vip_once_ipv4_first() -> None:
    services = [
        stored("prod/a/web:ipv6", "2001:db8::10"),
        stored("prod/a/web:ipv4", "192.0.2.10"),
    ]
    assert ingress_patch(services) == {
        "status": {
            "loadBalancer": {
                "ingress": [
                    {"ip": "192.0.2.10", "ipMode": "VIP"},
                    {"ip": "2001:db8::10", "ipMode": "VIP"},
                ]
            }
        }
    }
