"""The BGP announcer against a fake exabgp (tests.support.fake_exabgp) and the real relay: what
reaches exabgp, in which order, and that nothing is sent twice; a restarted exabgp is told
everything again; a graceful stop withdraws every route. No root, no router: the lab tests
run the real exabgp against BIRD and FRR."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest

from announce.bgp import BgpAnnouncer
from announce.bgp_config import Peer, Route, Session

ROOT = Path(__file__).resolve().parents[3]
HOP = IPv4Address("192.0.2.1")
SESSION = Session(
    asn=65001,
    router_id=HOP,
    peers=(
        Peer(IPv4Address("192.0.2.254"), 65000, HOP),
        Peer(IPv4Address("192.0.2.253"), 65000, HOP),
    ),
)


def route(last: int, **attributes: Any) -> Route:
    return Route(vip=IPv4Address(f"203.0.113.{last}"), next_hop=HOP, **attributes)


class FakeExabgp:
    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "exabgp.jsonl"
        self.binary = tmp_path / "exabgp"
        # exabgp is one executable the announcer runs as `exabgp server CONFIG`.
        self.binary.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" -m tests.support.fake_exabgp "$@"\n'
        )
        self.binary.chmod(0o755)

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def commands(self, pid: int | None = None) -> list[str]:
        return [
            e["line"]
            for e in self.events()
            if e["event"] == "command" and (pid is None or e["pid"] == pid)
        ]

    def starts(self) -> list[int]:
        return [e["pid"] for e in self.events() if e["event"] == "start"]


@pytest.fixture
def exabgp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeExabgp]:
    fake = FakeExabgp(tmp_path)
    monkeypatch.setenv("FAKE_EXABGP_LOG", str(fake.log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    yield fake


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def started(exabgp: FakeExabgp, tmp_path: Path) -> BgpAnnouncer:
    announcer = BgpAnnouncer(SESSION, tmp_path / "run", exabgp=str(exabgp.binary))
    await announcer.start()
    await until(
        lambda: announcer.announcing() and set(announcer.status()["peers"].values()) == {"up"},
        "exabgp's API connected and both sessions up",
    )
    return announcer


async def test_routes_reach_exabgp_once_and_then_only_their_changes(
    exabgp: FakeExabgp, tmp_path: Path
) -> None:
    announcer = BgpAnnouncer(SESSION, tmp_path / "run", exabgp=str(exabgp.binary))
    announcer.set([route(2), route(1)])  # before exabgp runs: kept, sent once it connects
    await announcer.start()
    try:
        await until(lambda: len(exabgp.commands()) == 2, "the first two routes")
        assert exabgp.commands() == [
            "announce route 203.0.113.1/32 next-hop 192.0.2.1",
            "announce route 203.0.113.2/32 next-hop 192.0.2.1",
        ]
        await until(lambda: set(announcer.status()["peers"].values()) == {"up"}, "sessions up")
        announcer.set([route(1), route(2)])  # the same set again: nothing to say
        announcer.set([route(2, med=5), route(3, communities=("65000:7",))])
        await until(lambda: len(exabgp.commands()) == 5, "the changes")
        # Withdrawals first; a changed route is announced again, never withdrawn first.
        assert exabgp.commands()[2:] == [
            "withdraw route 203.0.113.1/32 next-hop 192.0.2.1",
            "announce route 203.0.113.2/32 next-hop 192.0.2.1 med 5",
            "announce route 203.0.113.3/32 next-hop 192.0.2.1 community [ 65000:7 ]",
        ]
        status = announcer.status()
        assert status["routes"] == ["203.0.113.2/32", "203.0.113.3/32"]
        assert (status["running"], status["restarts"], status["errors"]) == (True, 0, 0)
        await asyncio.sleep(0.3)
        assert len(exabgp.commands()) == 5, "nothing sent that was not asked for"
    finally:
        await announcer.close(withdraw_wait=0.1)


async def test_a_restarted_exabgp_is_told_every_route_again(
    exabgp: FakeExabgp, tmp_path: Path
) -> None:
    announcer = await started(exabgp, tmp_path)
    try:
        announcer.set([route(1), route(2, local_pref=200)])
        await until(lambda: len(exabgp.commands()) == 2, "two routes")
        assert announcer.child is not None
        first = announcer.child.proc
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        await until(lambda: announcer.status()["restarts"] == 1, "the restart")
        await until(lambda: len(exabgp.starts()) == 2, "a second exabgp")
        second = exabgp.starts()[1]
        await until(lambda: len(exabgp.commands(second)) == 2, "the routes told again")
        assert exabgp.commands(second) == [
            "announce route 203.0.113.1/32 next-hop 192.0.2.1",
            "announce route 203.0.113.2/32 next-hop 192.0.2.1 local-preference 200",
        ]
        await until(lambda: set(announcer.status()["peers"].values()) == {"up"}, "sessions up")
        assert announcer.status()["routes"] == ["203.0.113.1/32", "203.0.113.2/32"]
    finally:
        await announcer.close(withdraw_wait=0.1)


async def test_close_withdraws_every_route_then_stops_exabgp(
    exabgp: FakeExabgp, tmp_path: Path
) -> None:
    announcer = await started(exabgp, tmp_path)
    announcer.set([route(1), route(2)])
    await until(lambda: len(exabgp.commands()) == 2, "two routes")
    assert announcer.child is not None
    proc = announcer.child.proc
    assert proc is not None
    await announcer.close(withdraw_wait=0.3)
    assert exabgp.commands()[2:] == [
        "withdraw route 203.0.113.1/32 next-hop 192.0.2.1",
        "withdraw route 203.0.113.2/32 next-hop 192.0.2.1",
    ]
    assert proc.returncode is not None, "exabgp still running after close()"
    assert not announcer.socket_path.exists()
    announcer.set([route(3)])  # the reconciler may still run while the agent stops
    await asyncio.sleep(0.2)
    assert len(exabgp.commands()) == 4


async def test_a_refused_command_is_counted_and_logged(
    exabgp: FakeExabgp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FAKE_EXABGP_REFUSE", "203.0.113.9/32")
    announcer = await started(exabgp, tmp_path)
    try:
        with caplog.at_level(logging.ERROR, logger="raftlb.bgp"):
            announcer.set([route(1), route(9)])
            await until(lambda: announcer.status()["errors"] == 1, "the refusal counted")
        assert "exabgp refused a command" in caplog.text
        assert [e["ok"] for e in exabgp.events() if e["event"] == "command"] == [True, False]
    finally:
        await announcer.close(withdraw_wait=0.1)


async def test_each_session_says_how_long_it_is_up_what_it_sent_and_the_refreshes_asked(
    exabgp: FakeExabgp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EXABGP_REFRESH", "1")
    announcer = await started(exabgp, tmp_path)
    try:
        announcer.set([route(1), route(2)])
        await until(lambda: len(exabgp.commands()) == 2, "the routes sent")
        first, second = (str(p.address) for p in SESSION.peers)
        await until(lambda: announcer.status()["sessions"][first]["refreshes"] == 1, "refresh")
        sessions = announcer.status()["sessions"]
        assert sessions[second]["refreshes"] == 0
        assert all(s["state"] == "up" and s["routes_sent"] == 2 for s in sessions.values())
        assert all(s["up_for"] is not None and s["up_for"] >= 0 for s in sessions.values())
    finally:
        await announcer.close(withdraw_wait=0.1)
    assert all(s["up_for"] is None for s in announcer.status()["sessions"].values())


async def test_a_route_holding_a_line_break_is_never_sent(
    exabgp: FakeExabgp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A value that smuggled in a line break would be a second command to every router."""
    announcer = await started(exabgp, tmp_path)
    try:
        smuggled = "65000:1 ]\nannounce route 0.0.0.0/0 next-hop 192.0.2.66 community [ 1:1"
        with caplog.at_level(logging.ERROR, logger="raftlb.bgp"):
            announcer.set([route(1), route(2, communities=(smuggled,))])
            await until(lambda: len(exabgp.commands()) == 1, "the clean route")
            await asyncio.sleep(0.3)
        assert exabgp.commands() == ["announce route 203.0.113.1/32 next-hop 192.0.2.1"]
        assert "not sent, it holds control characters" in caplog.text
    finally:
        await announcer.close(withdraw_wait=0.1)


async def test_ipv6_routes_carry_an_ipv6_next_hop(exabgp: FakeExabgp, tmp_path: Path) -> None:
    announcer = await started(exabgp, tmp_path)
    try:
        hop = IPv6Address("2001:db8::1")
        announcer.set([Route(vip=IPv6Address("2001:db8:1::10"), next_hop=hop)])
        await until(lambda: len(exabgp.commands()) == 1, "the IPv6 route")
        assert exabgp.commands() == ["announce route 2001:db8:1::10/128 next-hop 2001:db8::1"]
        assert announcer.status()["errors"] == 0
    finally:
        await announcer.close(withdraw_wait=0.1)
