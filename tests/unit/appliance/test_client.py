"""appliance.client against the real aiohttp app and the fake cluster, served by a thread."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from appliance.apierror import ApiError
from appliance.bodies import ServiceDeleted, Status
from appliance.client import (
    ApiClient,
    ApiUnreachable,
    ClientConfigError,
    client_from,
    read_token,
    service_path,
)
from appliance.lab.served import ServedApp
from appliance.model import AllocationRequest, NodeInfo, Pool, Port, PortKey, Service, ServiceSpec
from raft.cluster import SubmitError
from tests.support.agentapi import TOKEN
from tests.support.agentapi import agent_app as support_app
from tests.support.fake_cluster import InMemoryCluster
from tests.support.net import free_port

POOL = Pool(name="web", addresses=["192.0.2.10-192.0.2.12"], default=True)


def spec(service_id: str, *ports: int, **extra: Any) -> ServiceSpec:
    return ServiceSpec(id=service_id, ports=[Port(port=p) for p in ports], **extra)


def agent_app(cluster: InMemoryCluster) -> web.Application:
    return support_app(cluster, version="9.9.9")


@pytest.fixture
def cluster() -> InMemoryCluster:
    return InMemoryCluster("n1", {"n1": "127.0.0.1:7001"})


@pytest.fixture
def server(cluster: InMemoryCluster) -> Iterator[ServedApp]:
    with ServedApp(agent_app(cluster)) as served:
        yield served


@pytest.fixture
def client(server: ServedApp) -> Iterator[ApiClient]:
    with ApiClient(server.url, TOKEN, timeout=5) as api:
        yield api


# -- reads and writes return model values -------------------------------------------------------


def test_status_and_nodes(client: ApiClient) -> None:
    status = client.status()
    assert isinstance(status, Status)
    assert (status.node, status.version, status.raft.has_quorum) == ("n1", "9.9.9", True)
    assert status.dataplane.forward == "none" and status.bgp is None and status.l2 is None
    nodes = client.nodes()
    assert all(isinstance(n, NodeInfo) for n in nodes)
    assert [(n.id, n.role, n.connected) for n in nodes] == [("n1", "leader", True)]


def test_pool_put_get_list_delete(client: ApiClient) -> None:
    assert client.put_pool(POOL) == POOL
    assert client.pool("web") == POOL
    assert client.pools() == [POOL]
    client.delete_pool("web")
    assert client.pools() == []
    with pytest.raises(ApiError) as caught:
        client.pool("web")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert "'web' does not exist" in str(caught.value)


def test_service_ids_with_slashes(client: ApiClient) -> None:
    client.put_pool(POOL)
    web_spec = spec("prod/default/web", 80, 443)
    stored = client.put_service(web_spec)
    assert isinstance(stored, Service)
    assert stored.spec == web_spec
    assert stored.address == ipaddress.IPv4Address("192.0.2.10")
    assert client.service("prod/default/web") == stored
    assert client.services() == [stored]
    client.delete_service("prod/default/web")
    assert client.services() == []
    with pytest.raises(ApiError) as caught:
        client.delete_service("prod/default/web")
    assert caught.value.status == 404


@pytest.mark.parametrize("odd", ["a/../b", "a/./b", "a//b"])
def test_dot_segments_are_not_service_ids(client: ApiClient, odd: str) -> None:
    # Proxies and HTTP libraries resolve such segments, so "a/../b" could reach "b".
    with pytest.raises(ValidationError, match="segment"):
        spec(odd, 80)


@pytest.mark.parametrize(
    ("service_id", "path"),
    [
        ("prod/default/web", "prod/default/web"),
        ("k8s/ns/a:b", "k8s/ns/a%3Ab"),
        ("a/./b", "a/%2E/b"),
        ("a/../b", "a/%2E%2E/b"),
        ("a/.../b", "a/.../b"),
    ],
)
def test_service_path(service_id: str, path: str) -> None:
    assert service_path(service_id) == path


def test_allocations_are_idempotent_and_released(client: ApiClient) -> None:
    client.put_pool(POOL)
    request = AllocationRequest(owner="k8s/ns/dns", ports=[PortKey(port=53, protocol="udp")])
    first = client.allocate(request)
    assert client.allocate(request) == first
    assert str(first.address) == "192.0.2.10"
    assert client.allocations() == [first]
    client.release("k8s/ns/dns")
    assert client.allocations() == []


def test_vips(client: ApiClient) -> None:
    client.put_pool(POOL)
    client.put_service(spec("a/http", 80, sharing_key="k"))
    client.put_service(spec("a/https", 443, sharing_key="k"))
    vips = client.vips()
    assert [(v.address, v.owners, v.ports) for v in vips] == [
        ("192.0.2.10", ["a/http", "a/https"], ["80/tcp", "443/tcp"])
    ]


def test_apply_in_one_request(client: ApiClient, cluster: InMemoryCluster) -> None:
    result = client.apply(pools=[POOL], services=[spec("a/one", 80), spec("a/two", 80)])
    assert result.pools() == [POOL]
    assert [str(s.address) for s in result.services()] == ["192.0.2.10", "192.0.2.11"]
    assert [c["type"] for c in cluster.applied] == ["batch"]
    assert client.apply(delete_services=["a/one"]).results == [ServiceDeleted(deleted="a/one")]
    again = client.apply(delete_services=["a/one"]).results
    assert again == [ServiceDeleted(deleted="a/one", existed=False)]


def test_apply_is_all_or_nothing(client: ApiClient) -> None:
    client.put_pool(POOL)
    with pytest.raises(ApiError) as caught:
        client.apply(services=[spec("a/one", 80), spec("a/two", 80, vip="203.0.113.1")])
    assert caught.value.status == 422
    assert caught.value.bad_input
    assert "203.0.113.1" in caught.value.message
    assert client.services() == []


def test_conflict_carries_code_and_fields(client: ApiClient) -> None:
    client.put_pool(POOL)
    with pytest.raises(ApiError) as caught:
        client.put_pool(Pool(name="other", addresses=["192.0.2.0/24"]))
    error = caught.value
    assert (error.status, error.code) == (409, "conflict")
    assert not error.bad_input
    assert error.fields[0]["field"] == "addresses"
    assert "overlaps" in error.message


def test_healthz_metrics_openapi(server: ServedApp, client: ApiClient) -> None:
    with ApiClient(server.url, None) as anonymous:
        assert anonymous.healthz()["ok"] is True
        with pytest.raises(ApiError) as caught:
            anonymous.status()
    assert caught.value.status == 401
    assert caught.value.hint is not None
    assert "token" in caught.value.hint
    assert "raftlb_raft_term 1.0" in client.metrics_text().splitlines()
    assert "/v1/apply" in client.openapi()["paths"]


# -- failures ---------------------------------------------------------------------------------


def test_wrong_token_is_an_api_error(server: ServedApp) -> None:
    with ApiClient(server.url, "not-the-token") as api, pytest.raises(ApiError) as caught:
        api.pools()
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")


def test_no_quorum_is_503_with_retry_after(client: ApiClient, cluster: InMemoryCluster) -> None:
    cluster.has_quorum = False
    with pytest.raises(ApiError) as caught:
        client.put_pool(POOL)
    error = caught.value
    assert (error.status, error.code, error.retry_after) == (503, "no_quorum", 1.0)
    assert error.hint is not None
    assert "quorum" in error.hint
    assert client.pools() == []


class SlowCommitCluster(InMemoryCluster):
    """Commits that are not confirmed within the write timeout (they may still happen)."""

    async def submit(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        raise SubmitError("timeout", f"not committed within {timeout:g}s")


def test_unconfirmed_write_does_not_claim_nothing_changed() -> None:
    with (
        ServedApp(agent_app(SlowCommitCluster())) as served,
        ApiClient(served.url, TOKEN) as api,
        pytest.raises(ApiError) as caught,
    ):
        api.put_pool(POOL)
    assert (caught.value.status, caught.value.code) == (503, "timeout")
    assert caught.value.hint is not None
    assert "may still be applied" in caught.value.hint


def test_connection_refused_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with ApiClient(url, TOKEN, timeout=2) as api, pytest.raises(ApiUnreachable) as caught:
        api.status()
    assert str(caught.value).startswith(f"cannot reach {url}: connection refused;")
    assert "agent running" in str(caught.value)


def test_silent_server_is_unreachable_after_the_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepted by the kernel, never answered
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with ApiClient(url, TOKEN, timeout=0.2) as api, pytest.raises(ApiUnreachable) as caught:
            api.pools()
    assert "no answer within 0.2s" in str(caught.value)
    assert "may still be applied" in str(caught.value)


async def _html_error(request: web.Request) -> web.Response:
    return web.Response(status=502, text="<html><h1>502 Bad Gateway</h1></html>")


async def _plain_ok(request: web.Request) -> web.Response:
    return web.Response(text="hello")


def test_answers_that_are_not_the_api_are_reported() -> None:
    app = web.Application()
    app.add_routes([web.get("/v1/pools", _html_error), web.get("/v1/status", _plain_ok)])
    with ServedApp(app) as served, ApiClient(served.url, TOKEN) as api:
        with pytest.raises(ApiError) as proxy:
            api.pools()
        with pytest.raises(ApiError) as not_json:
            api.status()
    assert (proxy.value.status, proxy.value.code) == (502, "http_error")
    assert "502 Bad Gateway" in proxy.value.message
    assert not_json.value.code == "bad_response"
    assert "not JSON" in not_json.value.message


# -- building a client ------------------------------------------------------------------------


def test_read_token_strips_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    assert read_token(path) == TOKEN


def test_missing_or_empty_token_file(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match=r"token file .*missing.* does not exist"):
        read_token(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ClientConfigError, match="is empty"):
        read_token(tmp_path / "empty")


def test_client_from_uses_the_token_file(server: ServedApp, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    with client_from(server.url + "/", tmp_path / "token", timeout=3) as api:
        assert api.pools() == []
        assert api.timeout == 3


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://host", "http://"])
def test_bad_api_url_is_refused(url: str) -> None:
    with pytest.raises(ClientConfigError, match="not an http"):
        ApiClient(url, TOKEN)


def test_tls_verification_setting_reaches_the_session(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA bundle")
    assert ApiClient("https://lb:8443", TOKEN, verify=str(ca)).session.verify == str(ca)
    with pytest.raises(ClientConfigError, match="CA file"):
        ApiClient("https://lb:8443", TOKEN, verify=str(tmp_path / "missing.pem"))
    assert ApiClient("https://lb:8443", TOKEN, verify=False).session.verify is False
    assert ApiClient("https://lb:8443", TOKEN).session.verify is True
