"""Hostile and careless requests, one by one: each gets a 4xx that names what is wrong, never
a 5xx, and nothing is proposed to Raft. (The fuzz test over the OpenAPI document is in
tests/integration/test_api_fuzz.py.)"""

from __future__ import annotations

import gzip
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from appliance.api.app import build_app
from appliance.limits import APPLY_MAX_ITEMS
from tests.support.agentapi import AUTH, JSON, TOKEN, context
from tests.support.fake_cluster import InMemoryCluster
from tests.unit.appliance.test_api import POOL


@pytest.fixture
def cluster() -> InMemoryCluster:
    return InMemoryCluster("n1", {"n1": "127.0.0.1:7001"})


@pytest.fixture
async def api(aiohttp_client: Any, cluster: InMemoryCluster) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(build_app(context(cluster)))
    return client


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({"Content-Type": "application/json; charset=x-nonsense"}, b"{}", 422, "invalid"),
        ({"Content-Type": "text/plain"}, json.dumps(POOL).encode(), 415, None),
        ({}, json.dumps(POOL).encode(), 415, None),  # aiohttp's default octet-stream
        (
            {"Content-Type": "application/json"},
            b'{"name": "web", "addresses": ["192.0.2.1"], "x": ' + b"9" * 5000 + b"}",
            400,
            "bad_json",
        ),
        ({"Content-Type": "application/json"}, nested(2000), 400, "bad_json"),
        ({"Content-Type": "application/json"}, nested(100_000), 400, "bad_json"),
        (
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            b"this is not gzip",
            400,
            "bad_body",
        ),
        (
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            gzip.compress(json.dumps(POOL).encode()),
            200,
            None,
        ),
        ({"Content-Type": "application/json"}, b'{"name": "\xff"}', 400, "bad_json"),
    ],
)
async def test_malformed_bodies_are_4xx_and_change_nothing(
    api: TestClient[Any, Any],
    cluster: InMemoryCluster,
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str | None,
) -> None:
    response = await api.put("/v1/pools/web", data=body, headers={**AUTH, **headers})
    assert response.status == status, await response.text()
    if status >= 400:
        assert (await response.json())["error"]["code"] == (code or "unsupported_media_type")
        assert cluster.applied == []


async def test_a_token_that_is_not_text_is_401(api: TestClient[Any, Any]) -> None:
    for value in (b"Bearer \xff", b"\xff\xfe", b"Bearer " + TOKEN.encode() + b"\xff"):
        response = await api.get("/v1/status", headers={"Authorization": value.decode("latin-1")})
        assert response.status == 401


async def test_a_malformed_request_logs_a_line_not_a_traceback(
    api: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        for _ in range(5):
            await api.put("/v1/pools/web", data=nested(2000), headers=JSON)
    assert sum(len(r.getMessage()) for r in caplog.records) < 5000


async def test_405_names_the_allowed_methods(api: TestClient[Any, Any]) -> None:
    response = await api.patch("/v1/pools/web", json=POOL, headers=AUTH)
    assert response.status == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "PUT", "DELETE"}


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/services/a%09b", "id"),
        ("/v1/services/a%0Ab", "id"),
        ("/v1/services/-x", "id"),
        ("/v1/pools/Not%20A%20Pool", "name"),
        ("/v1/allocations/a//b", "owner"),
    ],
)
async def test_ids_of_deletes_are_checked_before_anything_is_proposed(
    api: TestClient[Any, Any], cluster: InMemoryCluster, path: str, field: str
) -> None:
    response = await api.delete(path, headers=AUTH)
    assert response.status in (404, 422), await response.text()
    if response.status == 422:
        assert (await response.json())["error"]["fields"][0]["field"] == field
    assert cluster.applied == []


async def test_a_batch_is_counted_before_it_is_validated(
    api: TestClient[Any, Any], cluster: InMemoryCluster
) -> None:
    body = {"delete_services": ["x"] * (APPLY_MAX_ITEMS * 100)}
    response = await api.post("/v1/apply", json=body, headers=AUTH)
    assert response.status == 413
    body = {"delete_services": ["ok/id", "bad id", 5]}
    response = await api.post("/v1/apply", json=body, headers=AUTH)
    assert response.status == 422
    fields = [f["field"] for f in (await response.json())["error"]["fields"]]
    assert fields == ["delete_services.1", "delete_services.2"]
    response = await api.post("/v1/apply", json={"services": {"a": 1}}, headers=AUTH)
    assert response.status == 422
    assert cluster.applied == []


async def test_a_retried_batch_delete_succeeds(api: TestClient[Any, Any]) -> None:
    """Its first try was applied (its answer lost, or a 503 that committed after all)."""
    assert (await api.put("/v1/pools/web", json=POOL, headers=AUTH)).status == 200
    spec = {"ports": [{"port": 80}]}
    assert (await api.put("/v1/services/p/a", json=spec, headers=AUTH)).status == 200
    for attempt in range(2):
        response = await api.post("/v1/apply", json={"delete_services": ["p/a"]}, headers=AUTH)
        assert response.status == 200, (attempt, await response.text())
    results = (await response.json())["results"]
    assert results == [{"deleted": "p/a", "existed": False}]
    # A single DELETE of a gone id stays 404: the caller asked for that one.
    assert (await api.delete("/v1/services/p/a", headers=AUTH)).status == 404


async def test_a_taken_vip_is_refused_naming_vip(api: TestClient[Any, Any]) -> None:
    assert (await api.put("/v1/pools/web", json=POOL, headers=AUTH)).status == 200
    spec = {"vip": "192.0.2.10", "ports": [{"port": 80}]}
    assert (await api.put("/v1/services/p/a", json=spec, headers=AUTH)).status == 200
    response = await api.put("/v1/services/p/b", json=spec, headers=AUTH)
    assert response.status == 409
    assert (await response.json())["error"]["fields"][0]["field"] == "vip"
    response = await api.post("/v1/apply", json={"services": [{**spec, "id": "p/c"}]}, headers=AUTH)
    assert response.status == 409
    assert (await response.json())["error"]["fields"][0]["field"] == "services.0.vip"
