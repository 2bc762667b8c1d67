"""Unit tests for appliance/model.py: pools, services, health checks, backends, requests and the
field-naming of validation errors."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from appliance.model import (
    AllocationRequest,
    Backend,
    HealthCheck,
    IPFamily,
    Pool,
    PortKey,
    ServiceSpec,
    TransportProtocol,
    family_of,
    field_errors,
    format_field_errors,
    parse_address_block,
)

ip = ipaddress.ip_address


def errors_of(model: type[BaseModel], data: dict[str, Any], prefix: str = "") -> list[dict]:
    """Validate `data` expecting failure; return the field errors."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return field_errors(info.value, prefix)


def service(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": "prod/default/web", "ports": [{"port": 80}]}
    data.update(overrides)
    return data


# -- address blocks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [
        ("192.0.2.0/28", "192.0.2.0", "192.0.2.15"),
        ("192.0.2.10-192.0.2.20", "192.0.2.10", "192.0.2.20"),
        (" 192.0.2.10 - 192.0.2.20 ", "192.0.2.10", "192.0.2.20"),
        ("192.0.2.7", "192.0.2.7", "192.0.2.7"),
        ("192.0.2.7/32", "192.0.2.7", "192.0.2.7"),
        ("198.51.100.9-198.51.100.9", "198.51.100.9", "198.51.100.9"),
        ("2001:db8::/126", "2001:db8::", "2001:db8::3"),
        ("2001:db8::10-2001:db8::1f", "2001:db8::10", "2001:db8::1f"),
        ("2001:db8::1", "2001:db8::1", "2001:db8::1"),
        ("2001:db8:0:1::/64", "2001:db8:0:1::", "2001:db8:0:1:ffff:ffff:ffff:ffff"),
    ],
)
def test_parse_address_block_good(text: str, first: str, last: str) -> None:
    assert parse_address_block(text) == (ip(first), ip(last))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("192.0.2.1/28", "host bits"),
        ("192.0.2.0/33", "not a CIDR"),
        ("192.0.2.300", "not a CIDR"),
        ("not-an-ip", "not a CIDR"),
        ("", "not a CIDR"),
        ("192.0.2.20-192.0.2.10", "ends before it starts"),
        ("192.0.2.1-2001:db8::1", "mixes IPv4 and IPv6"),
        ("192.0.2.0/28-192.0.2.40", "not a CIDR"),
        ("2001:db8::/129", "not a CIDR"),
        ("2001:db8::20-2001:db8::10", "ends before it starts"),
    ],
)
def test_parse_address_block_bad_names_text(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_address_block(text)
    assert repr(text) in str(info.value)


# -- Pool ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addresses", "v4_size", "v6_size"),
    [
        (["192.0.2.0/28"], 16, 0),
        (["192.0.2.10-192.0.2.20"], 11, 0),
        (["192.0.2.7"], 1, 0),
        (["192.0.2.0/25", "192.0.2.128/25"], 256, 0),
        (["198.51.100.5", "198.51.100.6", "198.51.100.7"], 3, 0),
        (["203.0.113.128/25", "192.0.2.0/30"], 132, 0),
        # An IPv6 CIDR's all-zeros address (subnet-router anycast) is not a VIP.
        (["2001:db8::/120"], 0, 255),
        (["2001:db8::10-2001:db8::1f"], 0, 16),
        (["192.0.2.0/28", "2001:db8::/126"], 16, 3),
        (["2001:db8::/64"], 0, 2**64 - 1),
        (["2001:db8::/127", "2001:db8::2/128"], 0, 3),
    ],
)
def test_pool_accepts_blocks_and_counts_size(
    addresses: list[str], v4_size: int, v6_size: int
) -> None:
    pool = Pool(name="p", addresses=addresses)
    assert pool.size(IPFamily.IPV4) == v4_size
    assert pool.size(IPFamily.IPV6) == v6_size
    expected = {f for f, n in ((IPFamily.IPV4, v4_size), (IPFamily.IPV6, v6_size)) if n}
    assert pool.families() == expected
    # As written, but an IPv6 CIDR (shorter than /127) starts after its all-zeros address.
    expected_blocks = []
    for text in addresses:
        first, last = parse_address_block(text)
        if first.version == 6 and "/" in text and int(text.split("/")[1]) < 127:
            first += 1
        expected_blocks.append((first, last))
    assert pool.blocks() == expected_blocks


@pytest.mark.parametrize(
    ("addresses", "bad"),
    [
        (["192.0.2.0/28", "192.0.2.8-192.0.2.9"], "192.0.2.8-192.0.2.9"),
        (["192.0.2.0/28", "192.0.2.15"], "192.0.2.15"),
        (["192.0.2.5", "192.0.2.5"], "192.0.2.5"),
        (["2001:db8::/64", "2001:db8::5"], "2001:db8::5"),
        # The overlapping blocks are not next to each other as written.
        (["192.0.2.0/28", "192.0.2.100-192.0.2.110", "192.0.2.3"], "192.0.2.3"),
        (["192.0.2.20-192.0.2.30", "192.0.2.0/27"], "192.0.2.0/27"),
    ],
)
def test_pool_rejects_overlapping_blocks(addresses: list[str], bad: str) -> None:
    errors = errors_of(Pool, {"name": "p", "addresses": addresses})
    assert [e["field"] for e in errors] == ["addresses"]
    assert "overlap" in errors[0]["message"]
    assert repr(bad) in errors[0]["message"]
    assert bad in errors[0]["value"]


@pytest.mark.parametrize(
    ("data", "field", "value"),
    [
        ({"name": "p", "addresses": ["192.0.2.1/28"]}, "addresses.0", "192.0.2.1/28"),
        ({"name": "p", "addresses": ["192.0.2.1", "192.0.2.300"]}, "addresses.1", "192.0.2.300"),
        ({"name": "p", "addresses": ["bogus"]}, "addresses.0", "bogus"),
        ({"name": "p", "addresses": ["192.0.2.9-192.0.2.1"]}, "addresses.0", "192.0.2.9-192.0.2.1"),
        (
            {"name": "p", "addresses": ["192.0.2.1-2001:db8::1"]},
            "addresses.0",
            "192.0.2.1-2001:db8::1",
        ),
        ({"name": "p", "addresses": []}, "addresses", []),
        ({"name": "Bad", "addresses": ["192.0.2.1"]}, "name", "Bad"),
        ({"name": "-p", "addresses": ["192.0.2.1"]}, "name", "-p"),
        ({"name": "p-", "addresses": ["192.0.2.1"]}, "name", "p-"),
        ({"name": "p" * 64, "addresses": ["192.0.2.1"]}, "name", "p" * 64),
        ({"name": "", "addresses": ["192.0.2.1"]}, "name", ""),
        ({"name": "p", "addresses": ["192.0.2.1"], "announce": "ospf"}, "announce", "ospf"),
        ({"name": "p", "addresses": ["192.0.2.1"], "extra": 1}, "extra", 1),
        ({"addresses": ["192.0.2.1"]}, "name", None),
        (
            {"name": "p", "addresses": ["192.0.2.1"], "balancing": {"table_size": 4096}},
            "balancing.table_size",
            4096,
        ),
        (
            {"name": "p", "addresses": ["192.0.2.1"], "balancing": {"table_size": 65537}},
            "balancing.table_size",
            65537,
        ),
        (
            {"name": "p", "addresses": ["192.0.2.1"], "balancing": {"seed": -1}},
            "balancing.seed",
            -1,
        ),
        (
            {"name": "p", "addresses": ["192.0.2.1"], "balancing": {"source": "client"}},
            "balancing.source",
            "client",
        ),
        (
            {
                "name": "p",
                "addresses": ["192.0.2.1"],
                "announce": "bgp",
                "balancing": {"source": "vip"},
            },
            "balancing",
            None,
        ),
    ],
)
def test_pool_rejects_bad_input_naming_field_and_value(
    data: dict[str, Any], field: str, value: Any
) -> None:
    errors = errors_of(Pool, data)
    matching = [e for e in errors if e["field"] == field]
    assert matching, errors
    if value is not None:
        assert matching[0]["value"] == value


@pytest.mark.parametrize("name", ["a", "pool-1", "v4.prod", "a_b", "0", "x" * 63, "1.2.3"])
def test_pool_name_accepted(name: str) -> None:
    assert Pool(name=name, addresses=["192.0.2.1"]).name == name


@pytest.mark.parametrize(
    ("addresses", "address", "contains"),
    [
        (["192.0.2.0/28"], "192.0.2.0", True),
        (["192.0.2.0/28"], "192.0.2.15", True),
        (["192.0.2.0/28"], "192.0.2.16", False),
        (["192.0.2.10-192.0.2.20"], "192.0.2.9", False),
        (["192.0.2.10-192.0.2.20"], "192.0.2.10", True),
        (["192.0.2.10-192.0.2.20"], "192.0.2.20", True),
        (["192.0.2.10-192.0.2.20"], "192.0.2.21", False),
        (["192.0.2.7"], "192.0.2.7", True),
        (["192.0.2.7"], "192.0.2.8", False),
        (["192.0.2.0/28", "203.0.113.5"], "203.0.113.5", True),
        (["192.0.2.0/28", "203.0.113.5"], "203.0.113.4", False),
        (["2001:db8::/64"], "2001:db8::ffff", True),
        (["2001:db8::/64"], "2001:db8:0:1::", False),
        # Same integer value in the other family is not contained.
        (["2001:db8::/64"], "192.0.2.1", False),
        (["192.0.2.0/24"], "::c000:201", False),
    ],
)
def test_pool_contains(addresses: list[str], address: str, contains: bool) -> None:
    assert Pool(name="p", addresses=addresses).contains(ip(address)) is contains


@pytest.mark.parametrize(
    ("addresses", "avoid", "address", "usable"),
    [
        (["192.0.2.0/24"], False, "192.0.2.0", True),
        (["192.0.2.0/24"], False, "192.0.2.255", True),
        (["192.0.2.0/24"], True, "192.0.2.0", False),
        (["192.0.2.0/24"], True, "192.0.2.255", False),
        (["192.0.2.0/24"], True, "192.0.2.1", True),
        (["192.0.2.0/24"], True, "192.0.2.254", True),
        (["192.0.2.0/24"], True, "198.51.100.1", False),
        (["192.0.2.0/24"], False, "198.51.100.1", False),
        # Only IPv4 addresses are "buggy".
        (["2001:db8::/120"], True, "2001:db8::", False),
        (["2001:db8::/120"], True, "2001:db8::1", True),
        (["2001:db8::/120"], True, "2001:db8::ff", True),
        (["192.0.2.0/24", "2001:db8::/120"], True, "2001:db8::100", False),
    ],
)
def test_pool_usable_respects_avoid_buggy_ips(
    addresses: list[str], avoid: bool, address: str, usable: bool
) -> None:
    pool = Pool(name="p", addresses=addresses, avoid_buggy_ips=avoid)
    assert pool.usable(ip(address)) is usable


@pytest.mark.parametrize(
    ("mine", "theirs", "overlap"),
    [
        (["192.0.2.0/28"], ["192.0.2.16/28"], False),
        (["192.0.2.0/25"], ["192.0.2.128/25"], False),
        (["192.0.2.0/28"], ["192.0.2.15"], True),
        (["192.0.2.0/24"], ["192.0.2.100-192.0.2.110"], True),
        (["192.0.2.100-192.0.2.110"], ["192.0.2.0/24"], True),
        (["192.0.2.10-192.0.2.20"], ["192.0.2.20-192.0.2.30"], True),
        (["192.0.2.0/28"], ["2001:db8::/64"], False),
        (["2001:db8::/64"], ["2001:db8::/48"], True),
        (["2001:db8::/64"], ["2001:db8:0:1::/64"], False),
        (["192.0.2.0/28", "2001:db8::/64"], ["198.51.100.0/24", "2001:db8::42"], True),
    ],
)
def test_pool_overlaps(mine: list[str], theirs: list[str], overlap: bool) -> None:
    a = Pool(name="a", addresses=mine)
    b = Pool(name="b", addresses=theirs)
    forward, backward = a.overlaps(b), b.overlaps(a)
    assert (forward is not None) is overlap
    assert (backward is not None) is overlap
    if overlap:
        assert "'b'" in forward
        assert "'a'" in backward


def test_pool_is_frozen_and_round_trips() -> None:
    pool = Pool(
        name="p", addresses=["192.0.2.0/28", "2001:db8::/64"], default=True, avoid_buggy_ips=True
    )
    with pytest.raises(ValidationError):
        pool.name = "q"  # type: ignore[misc]
    data = pool.model_dump(mode="json")
    assert data["announce"] == "l2"
    assert Pool.model_validate(data) == pool


# -- ServiceSpec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ports", "ok"),
    [
        ([{"port": 80}], True),
        ([{"port": 80}, {"port": 443}], True),
        ([{"port": 53, "protocol": "tcp"}, {"port": 53, "protocol": "udp"}], True),
        ([{"port": 80}, {"port": 80}], False),
        ([{"port": 80}, {"port": 80, "protocol": "tcp"}], False),
        ([{"port": 53, "protocol": "udp"}, {"port": 53, "protocol": "udp"}], False),
        ([{"port": 80, "name": "http"}, {"port": 80, "name": "other"}], False),
    ],
)
def test_service_ports_unique_by_protocol_and_number(ports: list[dict], ok: bool) -> None:
    if ok:
        spec = ServiceSpec.model_validate(service(ports=ports))
        assert len(spec.port_keys()) == len(ports)
    else:
        errors = errors_of(ServiceSpec, service(ports=ports))
        assert [e["field"] for e in errors] == ["ports"]
        assert "listed twice" in errors[0]["message"]
        assert str(ports[0]["port"]) in errors[0]["message"]


@pytest.mark.parametrize(
    ("port", "ok"),
    [(0, False), (1, True), (80, True), (65535, True), (65536, False), (-1, False)],
)
def test_service_port_range(port: int, ok: bool) -> None:
    data = service(ports=[{"port": port}])
    if ok:
        assert ServiceSpec.model_validate(data).ports[0].port == port
    else:
        errors = errors_of(ServiceSpec, data)
        assert errors[0]["field"] == "ports.0.port"
        assert errors[0]["value"] == port


@pytest.mark.parametrize(
    ("vip", "ip_family", "ok", "family"),
    [
        ("192.0.2.10", None, True, IPFamily.IPV4),
        ("192.0.2.10", "ipv4", True, IPFamily.IPV4),
        ("192.0.2.10", "ipv6", False, None),
        ("2001:db8::10", None, True, IPFamily.IPV6),
        ("2001:db8::10", "ipv6", True, IPFamily.IPV6),
        ("2001:db8::10", "ipv4", False, None),
        (None, None, True, IPFamily.IPV4),
        (None, "ipv6", True, IPFamily.IPV6),
        (None, "ipv4", True, IPFamily.IPV4),
    ],
)
def test_service_family_matches_vip(
    vip: str | None, ip_family: str | None, ok: bool, family: IPFamily | None
) -> None:
    data = service(vip=vip, ip_family=ip_family)
    if ok:
        assert ServiceSpec.model_validate(data).family() == family
    else:
        errors = errors_of(ServiceSpec, data)
        assert len(errors) == 1
        assert "does not match" in errors[0]["message"]
        assert vip in errors[0]["message"]
        assert ip_family in errors[0]["message"]


@pytest.mark.parametrize(
    ("overrides", "field", "value"),
    [
        ({"bogus": 1}, "bogus", 1),
        ({"ports": [{"port": 80, "colour": "red"}]}, "ports.0.colour", "red"),
        ({"health_check": {"kind": "tcp"}}, "health_check.kind", "tcp"),
        (
            {"ports": [{"port": 80, "backends": [{"address": "192.0.2.1", "port": 1, "x": 2}]}]},
            "ports.0.backends.0.x",
            2,
        ),
        ({"id": ""}, "id", ""),
        ({"id": "-web"}, "id", "-web"),
        ({"id": "a b"}, "id", "a b"),
        ({"ports": []}, "ports", []),
        ({"pool": "Upper"}, "pool", "Upper"),
        ({"sharing_key": "has space"}, "sharing_key", "has space"),
        ({"sharing_key": ""}, "sharing_key", ""),
        ({"traffic_policy": "everywhere"}, "traffic_policy", "everywhere"),
        ({"affinity": "cookie"}, "affinity", "cookie"),
        ({"health_check_node_port": 0}, "health_check_node_port", 0),
        ({"health_check_node_port": 70000}, "health_check_node_port", 70000),
        ({"nodes": ["Node1"]}, "nodes.0", "Node1"),
        ({"ports": [{"port": 80, "protocol": "sctp"}]}, "ports.0.protocol", "sctp"),
        ({"ports": [{"port": 80, "name": "n" * 64}]}, "ports.0.name", "n" * 64),
    ],
)
def test_service_rejects_bad_fields(overrides: dict[str, Any], field: str, value: Any) -> None:
    errors = errors_of(ServiceSpec, service(**overrides))
    assert [e["field"] for e in errors] == [field]
    assert errors[0]["value"] == value


@pytest.mark.parametrize(
    "service_id", ["web", "prod-k8s/default/web", "a", "c1/ns/svc:8080", "A.b_c-d"]
)
def test_service_id_accepted(service_id: str) -> None:
    assert ServiceSpec.model_validate(service(id=service_id)).id == service_id


@pytest.mark.parametrize(
    "data",
    [
        service(),
        service(vip="192.0.2.10", sharing_key="shared-1", pool="v4"),
        service(
            id="prod/ns/dns",
            vip="2001:db8::53",
            ip_family="ipv6",
            ports=[
                {
                    "port": 53,
                    "protocol": "udp",
                    "name": "dns",
                    "backends": [
                        {"address": "2001:db8::1:1", "port": 30053, "weight": 3, "node": "k1"},
                        {"address": "2001:db8::1:2", "port": 30053},
                    ],
                },
                {"port": 53, "protocol": "tcp"},
            ],
            traffic_policy="local",
            health_check_node_port=32000,
            health_check={"type": "http", "path": "/healthz", "interval": 2, "timeout": 1},
            affinity="source",
            nodes=["lb1", "lb2"],
        ),
    ],
)
def test_service_json_round_trip(data: dict[str, Any]) -> None:
    spec = ServiceSpec.model_validate(data)
    dumped = spec.model_dump(mode="json")
    assert ServiceSpec.model_validate(dumped) == spec
    # The JSON form is plain: addresses and enums are strings.
    if spec.vip is not None:
        assert dumped["vip"] == data["vip"]
    assert all(isinstance(p["protocol"], str) for p in dumped["ports"])
    assert isinstance(dumped["traffic_policy"], str)


def test_service_port_keys_and_defaults() -> None:
    spec = ServiceSpec.model_validate(
        service(ports=[{"port": 443}, {"port": 53, "protocol": "udp"}])
    )
    assert spec.port_keys() == [
        PortKey(protocol=TransportProtocol.TCP, port=443),
        PortKey(protocol=TransportProtocol.UDP, port=53),
    ]
    assert spec.health_check == HealthCheck()
    assert spec.traffic_policy == "cluster"
    assert spec.vip is None
    assert spec.pool is None


def test_service_duplicate_backends_rejected() -> None:
    backends = [{"address": "192.0.2.1", "port": 80}, {"address": "192.0.2.1", "port": 80}]
    errors = errors_of(ServiceSpec, service(ports=[{"port": 80, "backends": backends}]))
    assert [e["field"] for e in errors] == ["ports.0.backends"]
    assert "192.0.2.1 port 80 is listed twice" in errors[0]["message"]
    # Same address, different port is two backends.
    backends[1]["port"] = 81
    spec = ServiceSpec.model_validate(service(ports=[{"port": 80, "backends": backends}]))
    assert len(spec.ports[0].backends) == 2


# -- HealthCheck ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "ok"),
    [
        ({}, True),
        ({"interval": 1.0, "timeout": 1.0}, True),
        ({"interval": 1.0, "timeout": 1.01}, False),
        ({"interval": 0.05, "timeout": 0.05}, True),
        ({"interval": 0.1, "timeout": 0.5}, False),
        ({"interval": 10, "timeout": 5}, True),
        ({"interval": 0.04}, False),
        ({"interval": 3601}, False),
        ({"timeout": 0.001}, False),
        ({"interval": 100, "timeout": 61}, False),
        ({"path": "healthz"}, False),
        ({"path": "/a b"}, False),
        ({"path": "/healthz?x=1"}, True),
        ({"expected_status": 99}, False),
        ({"expected_status": 599}, True),
        ({"rise": 0}, False),
        ({"fall": 101}, False),
        ({"type": "icmp"}, False),
        ({"type": "none"}, True),
    ],
)
def test_health_check_validation(data: dict[str, Any], ok: bool) -> None:
    if ok:
        check = HealthCheck.model_validate(data)
        assert check.timeout <= check.interval
    else:
        assert errors_of(HealthCheck, data)


def test_health_check_timeout_over_interval_names_both() -> None:
    errors = errors_of(HealthCheck, {"interval": 1, "timeout": 2})
    assert len(errors) == 1
    assert "timeout 2.0" in errors[0]["message"]
    assert "interval 1.0" in errors[0]["message"]
    # Nested in a service, the error points at the health check.
    errors = errors_of(ServiceSpec, service(health_check={"interval": 1, "timeout": 2}))
    assert [e["field"] for e in errors] == ["health_check"]


# -- Backend -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "ok"),
    [
        ({"address": "192.0.2.1", "port": 30080}, True),
        ({"address": "2001:db8::1", "port": 30080, "weight": 1000, "node": "k8s-1"}, True),
        ({"address": "192.0.2.1", "port": 0}, False),
        ({"address": "192.0.2.1", "port": 65536}, False),
        ({"address": "192.0.2.1", "port": 80, "weight": 0}, False),
        ({"address": "192.0.2.1", "port": 80, "weight": 1001}, False),
        ({"address": "192.0.2.256", "port": 80}, False),
        ({"address": "192.0.2.0/24", "port": 80}, False),
        ({"port": 80}, False),
        ({"address": "192.0.2.1", "port": 80, "extra": True}, False),
        # Only text: pydantic's IPvAnyAddress took false as 0.0.0.0 and 3221225985 as 192.0.2.1.
        ({"address": False, "port": 80}, False),
        ({"address": 3221225985, "port": 80}, False),
        ({"address": "2001:db8::1%eth0", "port": 80}, False),
    ],
)
def test_backend_validation(data: dict[str, Any], ok: bool) -> None:
    if ok:
        backend = Backend.model_validate(data)
        assert backend.address == ip(data["address"])
        assert backend.weight == data.get("weight", 1)
        assert Backend.model_validate(backend.model_dump(mode="json")) == backend
    else:
        assert errors_of(Backend, data)


# -- AllocationRequest ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "family"),
    [
        ({"owner": "o1"}, IPFamily.IPV4),
        ({"owner": "o1", "ip_family": "ipv6"}, IPFamily.IPV6),
        ({"owner": "o1", "address": "2001:db8::5"}, IPFamily.IPV6),
        ({"owner": "o1", "address": "192.0.2.5", "ip_family": "ipv4"}, IPFamily.IPV4),
        (
            {
                "owner": "c/ns/svc",
                "pool": "p",
                "sharing_key": "k",
                "ports": [{"port": 80}, {"port": 53, "protocol": "udp"}],
            },
            IPFamily.IPV4,
        ),
    ],
)
def test_allocation_request_family(data: dict[str, Any], family: IPFamily) -> None:
    request = AllocationRequest.model_validate(data)
    assert request.family() == family
    assert AllocationRequest.model_validate(request.model_dump(mode="json")) == request


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"owner": "o1", "address": "192.0.2.5", "ip_family": "ipv6"}, "(root)"),
        ({"owner": "o1", "address": "2001:db8::5", "ip_family": "ipv4"}, "(root)"),
        ({"owner": ""}, "owner"),
        ({"owner": "o1", "pool": "Bad"}, "pool"),
        ({"owner": "o1", "ports": [{"port": 0}]}, "ports.0.port"),
        ({"owner": "o1", "ip_family": "ipv5"}, "ip_family"),
        ({"owner": "o1", "nope": 1}, "nope"),
        ({}, "owner"),
    ],
)
def test_allocation_request_rejected(data: dict[str, Any], field: str) -> None:
    errors = errors_of(AllocationRequest, data)
    assert [e["field"] for e in errors] == [field]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            service(),
            {
                "owner": "prod/default/web",
                "pool": None,
                "address": None,
                "prefer": None,
                "ip_family": "ipv4",
                "sharing_key": None,
                "ports": [{"protocol": "tcp", "port": 80}],
            },
        ),
        (
            service(
                vip="2001:db8::7",
                pool="v6",
                sharing_key="k",
                ports=[{"port": 53, "protocol": "udp"}, {"port": 53}],
            ),
            {
                "owner": "prod/default/web",
                "pool": "v6",
                "address": "2001:db8::7",
                "prefer": None,
                "ip_family": "ipv6",
                "sharing_key": "k",
                "ports": [{"protocol": "udp", "port": 53}, {"protocol": "tcp", "port": 53}],
            },
        ),
        (
            service(ip_family="ipv6", prefer_vip="2001:db8::9"),
            {
                "owner": "prod/default/web",
                "pool": None,
                "address": None,
                "prefer": "2001:db8::9",
                "ip_family": "ipv6",
                "sharing_key": None,
                "ports": [{"protocol": "tcp", "port": 80}],
            },
        ),
    ],
)
def test_allocation_request_for_service(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    request = AllocationRequest.for_service(ServiceSpec.model_validate(spec))
    assert request.model_dump(mode="json") == expected


# -- field_errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "data", "field", "value"),
    [
        (ServiceSpec, service(ports=[{"port": 70000}]), "ports.0.port", 70000),
        (ServiceSpec, service(ports=[{"port": 80}, {"port": "x"}]), "ports.1.port", "x"),
        (ServiceSpec, service(health_check={"rise": 0}), "health_check.rise", 0),
        (
            ServiceSpec,
            service(ports=[{"port": 80, "backends": [{"address": "192.0.2.1", "port": 99999}]}]),
            "ports.0.backends.0.port",
            99999,
        ),
        (Pool, {"name": "UPPER", "addresses": ["192.0.2.1"]}, "name", "UPPER"),
        (HealthCheck, {"expected_status": 700}, "expected_status", 700),
        (Backend, {"address": "192.0.2.1", "port": 80, "weight": 5000}, "weight", 5000),
        (
            AllocationRequest,
            {"owner": "o", "ports": [{"port": 1, "protocol": "icmp"}]},
            "ports.0.protocol",
            "icmp",
        ),
    ],
)
def test_field_errors_name_dotted_path_and_value(
    model: type[BaseModel], data: dict[str, Any], field: str, value: Any
) -> None:
    errors = errors_of(model, data)
    assert len(errors) == 1
    assert errors[0]["field"] == field
    assert errors[0]["value"] == value
    assert errors[0]["message"]
    assert not errors[0]["message"].startswith("Value error")


@pytest.mark.parametrize(
    ("model", "data", "field", "value"),
    [
        (ServiceSpec, service(vip="not-an-ip"), "vip", "not-an-ip"),
        (ServiceSpec, service(vip="192.0.2.300"), "vip", "192.0.2.300"),
        (Backend, {"address": "nope", "port": 80}, "address", "nope"),
        (AllocationRequest, {"owner": "o", "address": "2001:db8::g"}, "address", "2001:db8::g"),
    ],
)
def test_field_errors_name_plain_field_for_bad_addresses(
    model: type[BaseModel], data: dict[str, Any], field: str, value: Any
) -> None:
    # An address field is a union (IPv4 | IPv6); the error must still name the field itself,
    # not pydantic's internal validator names.
    errors = errors_of(model, data)
    assert errors
    assert {e["field"] for e in errors} == {field}
    assert all(e["value"] == value for e in errors)


def test_field_errors_prefix_and_root() -> None:
    errors = errors_of(ServiceSpec, service(ports=[{"port": 0}]), prefix="services.3")
    assert errors[0]["field"] == "services.3.ports.0.port"
    errors = errors_of(HealthCheck, {"interval": 1, "timeout": 2})
    assert errors[0]["field"] == "(root)"
    errors = errors_of(HealthCheck, {"interval": 1, "timeout": 2}, prefix="health_check")
    assert errors[0]["field"] == "health_check"


def test_field_errors_shortens_long_values() -> None:
    addresses = [f"192.0.2.{i}" for i in range(50)] + ["192.0.2.0"]
    errors = errors_of(Pool, {"name": "p", "addresses": addresses})
    assert errors[0]["field"] == "addresses"
    assert isinstance(errors[0]["value"], str)
    assert len(errors[0]["value"]) == 120
    assert errors[0]["value"].endswith("...")


def test_field_errors_reports_every_problem() -> None:
    errors = errors_of(
        ServiceSpec, {"id": "-x", "ports": [{"port": 0}, {"port": 80, "protocol": "gre"}]}
    )
    assert {e["field"] for e in errors} == {"id", "ports.0.port", "ports.1.protocol"}


def test_format_field_errors() -> None:
    errors = errors_of(ServiceSpec, service(ports=[{"port": 70000}]))
    lines = list(format_field_errors(errors))
    assert lines == ["ports.0.port: Input should be less than or equal to 65535 (got 70000)"]


@pytest.mark.parametrize(
    ("address", "family"),
    [("192.0.2.1", IPFamily.IPV4), ("2001:db8::1", IPFamily.IPV6)],
)
def test_family_of(address: str, family: IPFamily) -> None:
    assert family_of(ip(address)) == family


@pytest.mark.parametrize(
    "value",
    [
        "2001:db8:100::78%x",
        "2001:db8:100::78%x\nannounce route 203.0.113.7 next-hop 192.0.2.66",
        "fe80::1%eth0",
    ],
)
def test_zoned_addresses_are_refused_everywhere(value: str) -> None:
    """A zone id made one address compare as several (one VIP, four owners) and carried any
    text into logs and exabgp commands."""
    assert errors_of(Backend, {"address": value, "port": 80})[0]["field"] == "address"
    assert errors_of(ServiceSpec, service(vip=value))[0]["field"] == "vip"
    assert errors_of(AllocationRequest, {"owner": "o", "address": value})[0]["field"] == "address"
    # From Python too: an IPv6Address object may carry a zone.
    assert errors_of(Backend, {"address": ipaddress.IPv6Address("fe80::1%eth0"), "port": 80})


def test_addresses_stay_objects_in_python_and_text_in_json() -> None:
    backend = Backend.model_validate({"address": "2001:db8::1", "port": 80})
    assert backend.model_dump()["address"] == ipaddress.IPv6Address("2001:db8::1")
    assert backend.model_dump(mode="json")["address"] == "2001:db8::1"
    assert Backend.model_json_schema()["properties"]["address"]["type"] == "string"


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        # Lenient types: pydantic's lax mode stored `true` as port 1 and "80" as 80.
        (Backend, {"address": "192.0.2.1", "port": True}, "port"),
        (Backend, {"address": "192.0.2.1", "port": "80"}, "port"),
        (Backend, {"address": "192.0.2.1", "port": 80.0}, "port"),
        (Backend, {"address": "192.0.2.1", "port": 80, "weight": True}, "weight"),
        (HealthCheck, {"interval": True}, "interval"),
        (HealthCheck, {"interval": "1"}, "interval"),
        (HealthCheck, {"rise": 2.0}, "rise"),
        (Pool, {"name": "p", "addresses": ["192.0.2.0/28"], "default": "yes"}, "default"),
        (Pool, {"name": "p", "addresses": ["192.0.2.0/28"], "default": 1}, "default"),
        # Control characters that a terminal would act on, in text the CLI prints.
        (ServiceSpec, service(sharing_key="a\x1b[2Jb"), "sharing_key"),
        (ServiceSpec, service(sharing_key="a\x00b"), "sharing_key"),
        (ServiceSpec, service(sharing_key="abc\u202edcba"), "sharing_key"),
        (ServiceSpec, service(ports=[{"port": 80, "name": "ht\x1btp"}]), "ports.0.name"),
        (Backend, {"address": "192.0.2.1", "port": 80, "node": "k8s\n1"}, "node"),
        (HealthCheck, {"path": "/a\x00b"}, "path"),
        # Addresses a VIP can never be (they were handed out and announced).
        (Pool, {"name": "p", "addresses": ["127.0.0.0/28"]}, "addresses.0"),
        (Pool, {"name": "p", "addresses": ["224.0.0.0/28"]}, "addresses.0"),
        (Pool, {"name": "p", "addresses": ["0.0.0.0/29"]}, "addresses.0"),
        (Pool, {"name": "p", "addresses": ["255.255.255.255"]}, "addresses.0"),
        (Pool, {"name": "p", "addresses": ["169.254.1.0/28"]}, "addresses.0"),
        (Pool, {"name": "p", "addresses": ["192.0.2.0/28", "fe80::/120"]}, "addresses.1"),
        (Pool, {"name": "p", "addresses": ["ff02::1"]}, "addresses.0"),
        (Pool, {"name": "p", "addresses": ["::ffff:192.0.2.0/124"]}, "addresses.0"),
        (Pool, {"name": "p", "addresses": ["::1"]}, "addresses.0"),
        (ServiceSpec, service(vip="127.0.0.1"), "vip"),
        (ServiceSpec, service(vip="::"), "vip"),
        (AllocationRequest, {"owner": "o", "address": "239.1.1.1"}, "address"),
        (Backend, {"address": "0.0.0.0", "port": 80}, "address"),
        (Backend, {"address": "ff02::1", "port": 80}, "address"),
    ],
)
def test_strict_values_refused_naming_the_field(
    model: type[BaseModel], data: dict[str, Any], field: str
) -> None:
    errors = errors_of(model, data)
    assert errors, f"{data} was accepted"
    assert errors[0]["field"] == field, errors


def test_what_stays_accepted() -> None:
    """JSON has no int/float distinction; a loopback backend (a local proxy) is fine."""
    assert HealthCheck.model_validate({"interval": 1, "timeout": 1}).interval == 1.0
    assert str(Backend.model_validate({"address": "127.0.0.1", "port": 80}).address) == "127.0.0.1"
    assert Pool.model_validate({"name": "p", "addresses": ["192.0.2.0/24", "2001:db8::/64"]})
    spec = ServiceSpec.model_validate(
        service(sharing_key="prod/web-1", ports=[{"port": 80, "name": "http"}])
    )
    assert spec.sharing_key == "prod/web-1"


def test_a_pools_source_address_defaults_by_how_it_announces() -> None:
    l2 = Pool(name="p", addresses=["192.0.2.1"])
    bgp = Pool(name="p", addresses=["192.0.2.1"], announce="bgp")
    assert l2.source() == "vip" and bgp.source() == "node"
    pinned = Pool.model_validate(
        {"name": "p", "addresses": ["192.0.2.1"], "balancing": {"source": "node"}}
    )
    assert pinned.source() == "node"
    assert ServiceSpec.model_validate(service()).affinity == "consistent"
