"""The agent HTTP API (appliance.api.app) served by aiohttp around the in-memory fake cluster."""

from __future__ import annotations

import ipaddress
import re
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from appliance.api.app import ROUTE_NAMES, build_app
from appliance.api.openapi import openapi_document
from appliance.config import segment_errors
from appliance.limits import APPLY_MAX_BYTES, APPLY_MAX_ITEMS
from tests.support.agentapi import AUTH, JSON, TOKEN, context
from tests.support.fake_announcer import FakeAnnouncer
from tests.support.fake_cluster import InMemoryCluster

POOL = {"name": "web", "addresses": ["192.0.2.10-192.0.2.12"], "default": True}
WEB = {"id": "prod/default/web", "ports": [{"port": 80, "backends": []}]}

ROUTES = [
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/status"),
    ("GET", "/v1/nodes"),
    ("GET", "/v1/pools"),
    ("GET", "/v1/pools/web"),
    ("PUT", "/v1/pools/web"),
    ("DELETE", "/v1/pools/web"),
    ("GET", "/v1/services"),
    ("GET", "/v1/services/prod/default/web"),
    ("PUT", "/v1/services/prod/default/web"),
    ("DELETE", "/v1/services/prod/default/web"),
    ("GET", "/v1/allocations"),
    ("POST", "/v1/allocations"),
    ("DELETE", "/v1/allocations/prod/x"),
    ("GET", "/v1/vips"),
    ("POST", "/v1/apply"),
]


@pytest.fixture
def cluster() -> InMemoryCluster:
    return InMemoryCluster("n1", {"n1": "127.0.0.1:7001"})


@pytest.fixture
async def api(aiohttp_client: Any, cluster: InMemoryCluster) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(build_app(context(cluster)))
    return client


async def call(
    api: TestClient[Any, Any], method: str, path: str, body: Any = None, status: int = 200
) -> Any:
    """Send an authorised request, check its status, return the JSON answer."""
    response = await api.request(method, path, json=body, headers=AUTH)
    data = await response.json()
    assert response.status == status, data
    return data


def service(service_id: str, *ports: int, **extra: Any) -> dict[str, Any]:
    return {"id": service_id, "ports": [{"port": p} for p in ports], **extra}


# -- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_but_healthz_needs_the_token(
    api: TestClient[Any, Any], cluster: InMemoryCluster, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = await api.request(method, path, json={}, headers=headers)
        assert response.status == 401, (method, path, headers)
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="raftlb"'
        assert (await response.json())["error"]["code"] == "unauthorized"
    assert cluster.applied == []


async def test_healthz_needs_no_token(api: TestClient[Any, Any]) -> None:
    response = await api.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"ok": True, "node": "n1", "role": "leader"}


async def test_the_right_token_is_accepted(api: TestClient[Any, Any]) -> None:
    assert await call(api, "GET", "/v1/pools") == []


# -- pools ------------------------------------------------------------------------------------


async def test_pool_put_get_list_delete(api: TestClient[Any, Any]) -> None:
    put = await call(api, "PUT", "/v1/pools/web", POOL)
    balancing = {"table_size": 4093, "seed": 0x72616C62, "source": None}
    assert put == {
        **POOL,
        "announce": "l2",
        "avoid_buggy_ips": False,
        "bgp": None,
        "balancing": balancing,
    }
    assert await call(api, "GET", "/v1/pools/web") == put
    assert await call(api, "GET", "/v1/pools") == [put]
    assert await call(api, "DELETE", "/v1/pools/web") == {"deleted": "web"}
    assert await call(api, "GET", "/v1/pools") == []
    missing = await call(api, "GET", "/v1/pools/web", status=404)
    assert missing["error"]["code"] == "not_found"
    assert "web" in missing["error"]["message"]


async def test_pool_name_defaults_to_the_url(api: TestClient[Any, Any]) -> None:
    body = {k: v for k, v in POOL.items() if k != "name"}
    assert (await call(api, "PUT", "/v1/pools/web", body))["name"] == "web"


async def test_pool_name_in_body_must_match_the_url(
    api: TestClient[Any, Any], cluster: InMemoryCluster
) -> None:
    data = await call(api, "PUT", "/v1/pools/other", POOL, status=422)
    assert data["error"]["fields"] == [
        {"field": "name", "value": "web", "message": "expected 'other'"}
    ]
    assert cluster.applied == []


async def test_delete_unknown_pool_is_404(api: TestClient[Any, Any]) -> None:
    assert (await call(api, "DELETE", "/v1/pools/nope", status=404))["error"]["code"] == (
        "not_found"
    )


async def test_overlapping_pool_is_a_conflict(api: TestClient[Any, Any]) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    other = {"name": "other", "addresses": ["192.0.2.12/32"]}
    error = (await call(api, "PUT", "/v1/pools/other", other, status=409))["error"]
    assert error["code"] == "conflict"
    assert "overlaps" in error["message"]
    assert error["fields"][0]["field"] == "addresses"
    assert [p["name"] for p in await call(api, "GET", "/v1/pools")] == ["web"]


async def test_pool_in_use_cannot_be_deleted(api: TestClient[Any, Any]) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    await call(api, "PUT", "/v1/services/prod/default/web", WEB)
    error = (await call(api, "DELETE", "/v1/pools/web", status=409))["error"]
    assert error["code"] == "conflict"
    assert "prod/default/web" in error["message"]
    assert len(await call(api, "GET", "/v1/pools")) == 1


# -- services ---------------------------------------------------------------------------------


async def test_service_with_slashes_put_get_list_delete(api: TestClient[Any, Any]) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    put = await call(api, "PUT", "/v1/services/prod/default/web", WEB)
    assert put["address"] == "192.0.2.10"
    assert put["spec"]["id"] == "prod/default/web"
    assert put["spec"]["ports"][0] == {"name": None, "port": 80, "protocol": "tcp", "backends": []}
    assert await call(api, "GET", "/v1/services/prod/default/web") == put
    assert await call(api, "GET", "/v1/services") == [put]
    deleted = await call(api, "DELETE", "/v1/services/prod/default/web")
    assert deleted == {"deleted": "prod/default/web"}
    assert await call(api, "GET", "/v1/services") == []
    assert await call(api, "GET", "/v1/allocations") == []


async def test_service_id_defaults_to_the_url(api: TestClient[Any, Any]) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    data = await call(api, "PUT", "/v1/services/a/b/c", {"ports": [{"port": 443}]})
    assert data["spec"]["id"] == "a/b/c"


async def test_service_id_in_body_must_match_the_url(
    api: TestClient[Any, Any], cluster: InMemoryCluster
) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    data = await call(api, "PUT", "/v1/services/prod/default/other", WEB, status=422)
    assert data["error"]["fields"] == [
        {"field": "id", "value": "prod/default/web", "message": "expected 'prod/default/other'"}
    ]
    assert await call(api, "GET", "/v1/services") == []


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_unknown_service_is_404(api: TestClient[Any, Any], method: str) -> None:
    error = (await call(api, method, "/v1/services/prod/default/nope", status=404))["error"]
    assert error["code"] == "not_found"
    assert "prod/default/nope" in error["message"]


async def test_unknown_route_is_404(api: TestClient[Any, Any]) -> None:
    assert (await call(api, "GET", "/v1/nothing", status=404))["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/pools/web"),
        ("PUT", "/v1/services/a/b"),
        ("POST", "/v1/allocations"),
        ("POST", "/v1/apply"),
    ],
)
async def test_bad_json_is_400(
    api: TestClient[Any, Any], cluster: InMemoryCluster, method: str, path: str
) -> None:
    response = await api.request(method, path, data=b"{not json", headers=JSON)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "bad_json"
    assert "not JSON" in error["message"]
    assert cluster.applied == []


async def test_invalid_service_is_422_naming_field_and_value(
    api: TestClient[Any, Any], cluster: InMemoryCluster
) -> None:
    body = {"id": "a/b", "ports": [{"port": 70000}], "traffic_policy": "sideways"}
    error = (await call(api, "PUT", "/v1/services/a/b", body, status=422))["error"]
    assert error["code"] == "invalid"
    by_field = {f["field"]: f for f in error["fields"]}
    assert by_field["ports.0.port"]["value"] == 70000
    assert "65535" in by_field["ports.0.port"]["message"]
    assert by_field["traffic_policy"]["value"] == "sideways"
    assert cluster.applied == []


async def test_invalid_pool_is_422_naming_field_and_value(api: TestClient[Any, Any]) -> None:
    body = {"name": "web", "addresses": ["192.0.2.0/33"]}
    error = (await call(api, "PUT", "/v1/pools/web", body, status=422))["error"]
    assert error["fields"][0]["field"] == "addresses.0"
    assert error["fields"][0]["value"] == "192.0.2.0/33"
    assert "192.0.2.0/33" in error["fields"][0]["message"]


async def test_invalid_vip_is_one_error_on_the_field_vip(api: TestClient[Any, Any]) -> None:
    body = {"id": "a/b", "vip": "192.0.2.300", "ports": [{"port": 80}]}
    error = (await call(api, "PUT", "/v1/services/a/b", body, status=422))["error"]
    assert [(f["field"], f["value"]) for f in error["fields"]] == [("vip", "192.0.2.300")]


async def test_taken_address_is_a_conflict(api: TestClient[Any, Any]) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    await call(api, "PUT", "/v1/services/a/one", service("a/one", 80, vip="192.0.2.11"))
    error = (
        await call(
            api, "PUT", "/v1/services/a/two", service("a/two", 443, vip="192.0.2.11"), status=409
        )
    )["error"]
    assert error["code"] == "conflict"
    assert "192.0.2.11" in error["message"]
    assert "a/one" in error["message"]
    assert [s["spec"]["id"] for s in await call(api, "GET", "/v1/services")] == ["a/one"]


async def test_exhausted_pool_is_a_conflict(api: TestClient[Any, Any]) -> None:
    await call(api, "PUT", "/v1/pools/one", {"name": "one", "addresses": ["192.0.2.50/32"]})
    await call(api, "PUT", "/v1/services/a/one", service("a/one", 80))
    error = (await call(api, "PUT", "/v1/services/a/two", service("a/two", 80), status=409))[
        "error"
    ]
    assert error["code"] == "exhausted"
    assert "no free ipv4 address" in error["message"]
    assert error["fields"][0]["field"] == "pool"


# -- no quorum --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/v1/pools/web", POOL),
        ("DELETE", "/v1/pools/web", None),
        ("PUT", "/v1/services/prod/default/web", WEB),
        ("DELETE", "/v1/services/prod/default/web", None),
        ("POST", "/v1/allocations", {"owner": "x/y"}),
        ("DELETE", "/v1/allocations/x/y", None),
        ("POST", "/v1/apply", {"pools": [POOL]}),
    ],
)
async def test_writes_without_quorum_are_503_with_retry_after(
    api: TestClient[Any, Any], cluster: InMemoryCluster, method: str, path: str, body: Any
) -> None:
    cluster.has_quorum = False
    response = await api.request(method, path, json=body, headers=AUTH)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["code"] == "no_quorum"
    assert cluster.applied == []


async def test_reads_work_without_quorum(
    api: TestClient[Any, Any], cluster: InMemoryCluster
) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    cluster.has_quorum = False
    assert len(await call(api, "GET", "/v1/pools")) == 1
    status = await call(api, "GET", "/v1/status")
    assert status["raft"]["has_quorum"] is False
    assert status["raft"]["leader"] is None


# -- apply ------------------------------------------------------------------------------------


async def test_apply_puts_pools_then_services_in_one_commit(
    api: TestClient[Any, Any], cluster: InMemoryCluster
) -> None:
    body = {"pools": [POOL], "services": [service("a/one", 80), service("a/two", 80)]}
    data = await call(api, "POST", "/v1/apply", body)
    results = data["results"]
    assert results[0]["pool"]["name"] == "web"
    assert [r["service"]["address"] for r in results[1:]] == ["192.0.2.10", "192.0.2.11"]
    assert len(cluster.applied) == 1
    assert cluster.applied[0]["type"] == "batch"


async def test_apply_returns_each_service_as_stored(
    api: TestClient[Any, Any], cluster: InMemoryCluster
) -> None:
    """Raft answers only the address (cheap on the Raft thread); the API answers the whole
    service, as GET does."""
    await call(api, "PUT", "/v1/pools/web", POOL)
    data = await call(api, "POST", "/v1/apply", {"services": [service("a/one", 80, 443)]})
    (result,) = data["results"]
    assert result["service"] == await call(api, "GET", "/v1/services/a/one")
    put = await call(api, "PUT", "/v1/services/a/two", service("a/two", 80))
    assert put == await call(api, "GET", "/v1/services/a/two")


async def test_apply_beyond_the_limits_is_413_and_changes_nothing(
    api: TestClient[Any, Any], cluster: InMemoryCluster
) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    body = {"delete_services": [f"a/s{i}" for i in range(APPLY_MAX_ITEMS + 1)]}
    data = await call(api, "POST", "/v1/apply", body, status=413)
    assert data["error"]["code"] == "too_large"
    assert str(APPLY_MAX_ITEMS) in data["error"]["message"]
    big = {"services": [service("a/big", 80, description="x" * APPLY_MAX_BYTES)]}
    data = await call(api, "POST", "/v1/apply", big, status=413)
    assert str(APPLY_MAX_BYTES) in data["error"]["message"]
    assert len(cluster.applied) == 1  # the pool only


async def test_apply_is_all_or_nothing(api: TestClient[Any, Any], cluster: InMemoryCluster) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    before = cluster.view()
    body = {
        "pools": [{"name": "more", "addresses": ["198.51.100.0/30"]}],
        "services": [
            service("a/one", 80),
            service("a/two", 80, vip="203.0.113.9"),  # outside every pool
        ],
    }
    error = (await call(api, "POST", "/v1/apply", body, status=422))["error"]
    assert "203.0.113.9" in error["message"]
    assert cluster.view() == before
    assert await call(api, "GET", "/v1/services") == []
    assert [p["name"] for p in await call(api, "GET", "/v1/pools")] == ["web"]


async def test_apply_with_an_invalid_item_changes_nothing_and_names_it(
    api: TestClient[Any, Any], cluster: InMemoryCluster
) -> None:
    body = {"pools": [POOL], "services": [service("a/one", 80), service("a/two", 0)]}
    error = (await call(api, "POST", "/v1/apply", body, status=422))["error"]
    assert [(f["field"], f["value"]) for f in error["fields"]] == [("services.1.ports.0.port", 0)]
    assert cluster.applied == []


async def test_apply_deletes_services(api: TestClient[Any, Any]) -> None:
    await call(api, "POST", "/v1/apply", {"pools": [POOL], "services": [WEB]})
    data = await call(api, "POST", "/v1/apply", {"delete_services": ["prod/default/web"]})
    assert data == {"results": [{"deleted": "prod/default/web"}]}
    assert await call(api, "GET", "/v1/services") == []


@pytest.mark.parametrize(
    "body", [[], {}, {"pools": [], "services": []}, {"pods": []}, {"delete_services": "a/b"}]
)
async def test_apply_refuses_empty_or_malformed_bodies(
    api: TestClient[Any, Any], cluster: InMemoryCluster, body: Any
) -> None:
    assert (await call(api, "POST", "/v1/apply", body, status=422))["error"]["code"] == "invalid"
    assert cluster.applied == []


# -- allocations and vips ---------------------------------------------------------------------


async def test_allocation_is_idempotent_and_released(api: TestClient[Any, Any]) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    request = {"owner": "k8s/ns/gateway", "ports": [{"port": 53, "protocol": "udp"}]}
    first = await call(api, "POST", "/v1/allocations", request)
    again = await call(api, "POST", "/v1/allocations", request)
    assert first == again
    assert first["address"] == "192.0.2.10"
    assert first["pool"] == "web"
    assert await call(api, "GET", "/v1/allocations") == [first]
    other = await call(api, "POST", "/v1/allocations", {"owner": "k8s/ns/other"})
    assert other["address"] == "192.0.2.11"
    assert await call(api, "DELETE", "/v1/allocations/k8s/ns/gateway") == {
        "deleted": "k8s/ns/gateway"
    }
    assert await call(api, "GET", "/v1/allocations") == [other]
    missing = await call(api, "DELETE", "/v1/allocations/k8s/ns/gateway", status=404)
    assert missing["error"]["code"] == "not_found"


async def test_a_service_allocation_cannot_be_released_directly(
    api: TestClient[Any, Any],
) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    await call(api, "PUT", "/v1/services/prod/default/web", WEB)
    error = (await call(api, "DELETE", "/v1/allocations/prod/default/web", status=409))["error"]
    assert "delete the service" in error["message"]


async def test_vips_show_shared_addresses(api: TestClient[Any, Any]) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    await call(api, "PUT", "/v1/services/a/https", service("a/https", 443, sharing_key="k"))
    await call(api, "PUT", "/v1/services/a/http", service("a/http", 80, sharing_key="k"))
    await call(api, "PUT", "/v1/services/a/alone", service("a/alone", 80))
    vips = await call(api, "GET", "/v1/vips")
    assert vips == [
        {
            "address": "192.0.2.10",
            "pool": "web",
            "announce": "l2",
            "owners": ["a/http", "a/https"],
            "services": ["a/http", "a/https"],
            "sharing_key": "k",
            "ports": ["80/tcp", "443/tcp"],
            "node": None,
            "epoch": None,
            "since": None,
            "releasing": None,
            "previous": None,
            "reason": None,
            "dead_for": None,
            "bgp_announced_here": None,
            "backends": None,
        },
        {
            "address": "192.0.2.11",
            "pool": "web",
            "announce": "l2",
            "owners": ["a/alone"],
            "services": ["a/alone"],
            "sharing_key": None,
            "ports": ["80/tcp"],
            "node": None,
            "epoch": None,
            "since": None,
            "releasing": None,
            "previous": None,
            "reason": None,
            "dead_for": None,
            "bgp_announced_here": None,
            "backends": None,
        },
    ]


async def test_shared_address_refuses_a_port_clash(api: TestClient[Any, Any]) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    await call(api, "PUT", "/v1/services/a/one", service("a/one", 80, sharing_key="k"))
    clash = service("a/two", 80, sharing_key="k", vip="192.0.2.10")
    error = (await call(api, "PUT", "/v1/services/a/two", clash, status=409))["error"]
    assert "80/tcp" in error["message"]


# -- status, nodes, openapi, metrics ------------------------------------------------------------


async def test_status_and_nodes(api: TestClient[Any, Any]) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    await call(api, "PUT", "/v1/services/prod/default/web", WEB)
    status = await call(api, "GET", "/v1/status")
    assert status["node"] == "n1"
    assert status["version"] == "1.2.3"
    assert status["raft"]["role"] == "leader"
    assert status["raft"]["commit_index"] == 2
    assert (status["members"], status["members_connected"]) == (1, 1)
    assert (status["pools"], status["services"], status["allocations"], status["vips"]) == (
        1,
        1,
        1,
        1,
    )
    nodes = await call(api, "GET", "/v1/nodes")
    assert [(n["id"], n["role"], n["connected"]) for n in nodes] == [("n1", "leader", True)]


async def test_nodes_say_which_the_leader_keeps_warming(
    aiohttp_client: Any, cluster: InMemoryCluster
) -> None:
    """Only the leader knows which nodes its planner gives VIPs only as a last resort."""
    warming: list[frozenset[str] | None] = [frozenset({"n1"})]
    api = await aiohttp_client(build_app(context(cluster, warming=lambda: warming[0])))
    assert [n["warming"] for n in await call(api, "GET", "/v1/nodes")] == [True]
    warming[0] = frozenset()
    assert [n["warming"] for n in await call(api, "GET", "/v1/nodes")] == [False]
    warming[0] = None  # not leading (any more)
    assert [n["warming"] for n in await call(api, "GET", "/v1/nodes")] == [None]


async def test_status_carries_the_l2_announcers_counters(
    aiohttp_client: Any, cluster: InMemoryCluster
) -> None:
    announcer = FakeAnnouncer("eth1")
    announcer.set([ipaddress.ip_address("192.0.2.200")], time.monotonic() + 60)
    announcer.heard_claim(ipaddress.ip_address("192.0.2.200"), b"\x02\x00\x00\x00\x00\x09")
    api = await aiohttp_client(build_app(context(cluster, l2_status=announcer.status)))
    l2 = (await call(api, "GET", "/v1/status"))["l2"]
    assert (l2["interface"], l2["held"], l2["conflicts"], l2["send_errors"]) == ("eth1", 1, 1, 0)


async def test_status_without_an_l2_announcer_says_null(api: TestClient[Any, Any]) -> None:
    assert (await call(api, "GET", "/v1/status"))["l2"] is None


async def test_openapi_documents_exactly_the_routes_the_app_serves(
    api: TestClient[Any, Any], cluster: InMemoryCluster
) -> None:
    doc = await call(api, "GET", "/v1/openapi.json")
    assert doc["info"]["version"] == "1.2.3"
    served = set()
    for route in build_app(context(cluster)).router.routes():
        if route.method == "HEAD":  # aiohttp adds one per GET
            continue
        path = re.sub(r"\{(\w+)(?::[^}]*)?\}", r"{\1}", route.resource.canonical)
        served.add((route.method.lower(), path))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    assert documented == served and len(served) == len(ROUTE_NAMES)
    for path, ops in doc["paths"].items():
        named = {p["name"] for p in ops.get("parameters", [])}
        assert named == set(re.findall(r"\{(\w+)\}", path)), path
    assert "ServiceSpec" in doc["components"]["schemas"]


def test_a_route_without_an_openapi_operation_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"GET /v1/new \(get_new\)"):
        openapi_document("x", (*ROUTE_NAMES, ("GET", "/v1/new", "get_new")))


async def test_metrics_expose_raft_state_sizes_and_commit_latency(
    api: TestClient[Any, Any],
) -> None:
    await call(api, "PUT", "/v1/pools/web", POOL)
    await call(api, "PUT", "/v1/services/prod/default/web", WEB)
    response = await api.get("/metrics", headers=AUTH)
    assert response.status == 200
    text = await response.text()
    lines = set(text.splitlines())
    assert "raftlb_raft_term 1.0" in lines
    assert "raftlb_services 1.0" in lines
    assert "raftlb_pools 1.0" in lines
    assert "raftlb_commit_seconds_count 2.0" in lines


async def test_a_body_that_is_not_utf8_is_400(api: TestClient[Any, Any]) -> None:
    response = await api.request("PUT", "/v1/pools/web", data=b'{"name": "\xff"}', headers=JSON)
    assert response.status == 400


async def test_layer2_pool_off_the_segment_is_refused_before_any_commit(
    aiohttp_client: Any, cluster: InMemoryCluster
) -> None:
    networks = [ipaddress.ip_network("192.0.2.0/24")]
    ctx = context(
        cluster,
        pool_check=lambda pools, prefix: segment_errors(pools, networks, "eth0", prefix),
    )
    api: TestClient[Any, Any] = await aiohttp_client(build_app(ctx))
    off = {"name": "far", "addresses": ["198.51.100.0/28"]}
    error = (await call(api, "PUT", "/v1/pools/far", off, status=422))["error"]
    assert [(f["field"], f["value"]) for f in error["fields"]] == [
        ("addresses.0", "198.51.100.0/28")
    ]
    body = {"pools": [POOL, off], "services": [service("a/one", 80)]}
    error = (await call(api, "POST", "/v1/apply", body, status=422))["error"]
    assert [f["field"] for f in error["fields"]] == ["pools.1.addresses.0"]
    assert cluster.applied == []
    # Pools announced by BGP are routed, not on the segment: not this check's business.
    await call(api, "PUT", "/v1/pools/far", {**off, "announce": "bgp"})
    await call(api, "PUT", "/v1/pools/web", POOL)
