"""The API's connection guard (appliance.api.guard) around a real aiohttp server on loopback:
idle and slowloris connections are closed, a crowd at the limit cannot lock a client out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from appliance.api.app import build_app
from appliance.api.guard import ConnectionGuard
from tests.support.agentapi import AUTH, context
from tests.support.fake_cluster import InMemoryCluster

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def served(guard: ConnectionGuard) -> AsyncIterator[int]:
    cluster = InMemoryCluster("n1", {"n1": "127.0.0.1:7001"})
    runner = web.AppRunner(build_app(context(cluster, guard=guard)), keepalive_timeout=guard.idle)
    await runner.setup()
    server = await asyncio.get_running_loop().create_server(
        guard.factory(runner.server),  # type: ignore[arg-type]
        "127.0.0.1",
        0,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await runner.cleanup()


async def status(port: int) -> int:
    """One request on a fresh connection; its HTTP status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = AUTH["Authorization"]
    writer.write(
        f"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return int(line.split()[1])


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except (TimeoutError, ConnectionError):
        return False


async def test_idle_and_slowloris_connections_are_closed() -> None:
    guard = ConnectionGuard(max_connections=100, idle=0.5)
    async with served(guard) as port:
        idle = await asyncio.open_connection("127.0.0.1", port)
        slow = await asyncio.open_connection("127.0.0.1", port)
        slow[1].write(b"GET /v1/status HTTP/1.1\r\n")  # the rest never comes
        for _ in range(3):
            await asyncio.sleep(0.2)
            slow[1].write(b"X-a: b\r\n")  # a header now and then
        assert await closed(idle[0], 3)
        assert await closed(slow[0], 3)
        assert guard.timed_out == 2
        assert guard.open == {}
        assert await status(port) == 200


async def test_a_crowd_at_the_limit_cannot_lock_a_client_out() -> None:
    guard = ConnectionGuard(max_connections=50, idle=30)
    async with served(guard) as port:
        crowd: list[Any] = [await asyncio.open_connection("127.0.0.1", port) for _ in range(80)]
        await asyncio.sleep(0.1)
        assert len(guard.open) == 50
        for _ in range(5):  # each takes the place of the longest idle
            assert await status(port) == 200
        assert guard.evicted >= 30
        for _, writer in crowd:
            writer.close()


async def test_a_keep_alive_connection_gets_a_new_idle_time_after_each_answer() -> None:
    guard = ConnectionGuard(max_connections=10, idle=0.6)
    async with served(guard) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        auth = AUTH["Authorization"]
        for _ in range(4):  # 4 x 0.3 s: longer than the idle time, never idle that long
            await asyncio.sleep(0.3)
            writer.write(
                f"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            await reader.readexactly(length)
        assert await closed(reader, 3)  # and then idle: closed
        writer.close()
