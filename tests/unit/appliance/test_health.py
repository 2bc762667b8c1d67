"""Backend health checks: the rise/fall counting, and real checks against local servers."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from appliance.health import HealthChecker, Track
from appliance.model import Service, ServiceSpec
from tests.support.net import free_port


def test_track_falls_after_fall_failures_and_rises_after_rise_successes() -> None:
    track = Track()
    assert track.healthy
    assert not track.record(False, "refused", rise=2, fall=3, now=1.0)
    assert not track.record(False, "refused", rise=2, fall=3, now=2.0)
    assert not track.record(True, "ok", rise=2, fall=3, now=3.0)  # a success resets the count
    assert [track.record(False, "refused", 2, 3, t) for t in (4.0, 5.0, 6.0)] == [
        False,
        False,
        True,
    ]
    assert (track.healthy, track.since, track.reason) == (False, 6.0, "refused")
    assert not track.record(True, "ok", 2, 3, 7.0)
    assert track.record(True, "ok", 2, 3, 8.0)
    assert track.healthy and track.checks == 8


def service(port: int, **spec: Any) -> Service:
    check = {"interval": 0.05, "timeout": 0.05, "rise": 2, "fall": 2, **spec.pop("check", {})}
    body = {
        "id": "t/web",
        "ports": [{"port": 80, "backends": [{"address": "127.0.0.1", "port": port}]}],
        "health_check": check,
        **spec,
    }
    return Service(spec=ServiceSpec.model_validate(body), address=ipaddress.ip_address("192.0.2.9"))


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
async def checker() -> AsyncIterator[tuple[HealthChecker, list[int]]]:
    changes: list[int] = []
    health = HealthChecker()
    health.on_change = lambda: changes.append(health.version)
    yield health, changes
    await health.close()


async def test_tcp_check_follows_a_listener(checker: tuple[HealthChecker, list[int]]) -> None:
    health, changes = checker
    port = free_port()
    svc = service(port)
    backend = svc.spec.ports[0].backends[0]
    health.update({"t/web": svc})
    assert health.healthy("t/web", backend)  # healthy until proven otherwise
    await until(lambda: not health.healthy("t/web", backend))
    assert changes == [1]
    assert "tcp connect" in str(health.of_service("t/web")[0]["reason"])
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    try:
        await until(lambda: health.healthy("t/web", backend))
        assert changes == [1, 2]
    finally:
        server.close()
        await server.wait_closed()
    health.update({})
    assert health.of_service("t/web") == []


async def serve(handler: Any) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_http_check_expects_the_status(checker: tuple[HealthChecker, list[int]]) -> None:
    health, _ = checker
    status = {"code": 200}
    paths: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.Response(status=status["code"])

    runner, port = await serve(handler)
    try:
        svc = service(port, check={"type": "http", "path": "/ready"})
        backend = svc.spec.ports[0].backends[0]
        health.update({"t/web": svc})
        await until(lambda: len(paths) >= 3)
        assert health.healthy("t/web", backend)
        status["code"] = 503
        await until(lambda: not health.healthy("t/web", backend))
        assert "status 503, expected 200" in str(health.of_service("t/web")[0]["reason"])
        assert set(paths) == {"/ready"}
    finally:
        await runner.cleanup()


async def test_local_policy_asks_the_nodes_health_check_port(
    checker: tuple[HealthChecker, list[int]],
) -> None:
    health, _ = checker
    paths: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.Response(status=503)  # kube-proxy: no local endpoint on this node

    runner, port = await serve(handler)
    try:
        svc = service(free_port(), traffic_policy="local", health_check_node_port=port)
        backend = svc.spec.ports[0].backends[0]
        health.update({"t/web": svc})
        await until(lambda: not health.healthy("t/web", backend))
        assert set(paths) == {"/healthz"}
    finally:
        await runner.cleanup()


async def test_udp_backends_are_not_tcp_checked(checker: tuple[HealthChecker, list[int]]) -> None:
    health, changes = checker
    svc = service(free_port())  # nothing listens: a TCP check would fail
    udp = Service(
        spec=svc.spec.model_copy(
            update={"ports": [svc.spec.ports[0].model_copy(update={"protocol": "udp"})]}
        ),
        address=svc.address,
    )
    backend = udp.spec.ports[0].backends[0]
    health.update({"t/web": udp})
    await asyncio.sleep(0.3)  # several intervals
    assert health.healthy("t/web", backend) and changes == []
    assert "UDP" in str(health.of_service("t/web")[0]["reason"])
    # Back to TCP: checked again, from a fresh healthy state, then found down.
    health.update({"t/web": svc})
    await until(lambda: not health.healthy("t/web", backend))
