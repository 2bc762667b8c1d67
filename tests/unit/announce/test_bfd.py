"""BFD beside exabgp, the parts that need no namespace: BIRD's config, its answers, its socket."""

from __future__ import annotations

import asyncio
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from announce.bfd import BfdPeer, BfdTiming, BirdError, birdc, parse_sessions, render_bird

# As BIRD 2.0.12 answers `show bfd sessions` with `timeformat protocol iso long` (the header
# line and a session whose interface name is wider than its column, as the lab's are).
SESSIONS = """raftlb:
IP address                Interface  State      Since         Interval  Timeout
2001:db8::2               bfdy28242va Up         2026-12-03 07:11:31    0.100    0.300
192.0.2.9                 bfdy28242va Down       2026-12-03 07:11:31    1.000    0.000
192.0.2.2                 eth0       Up         2026-12-03 07:10:01    0.100    0.300"""


def test_one_single_hop_session_per_peer_from_its_source_and_nothing_else() -> None:
    peers = [
        BfdPeer(IPv4Address("192.0.2.1"), IPv4Address("192.0.2.11")),
        BfdPeer(IPv6Address("2001:db8:1::1"), IPv6Address("2001:db8:1::b")),
    ]
    text = render_bird(peers, IPv4Address("192.0.2.11"), BfdTiming(50, 5))
    assert "router id 192.0.2.11;" in text
    assert '    interface "*" { interval 50 ms; multiplier 5; };' in text
    assert "    neighbor 192.0.2.1 local 192.0.2.11;" in text
    assert "    neighbor 2001:db8:1::1 local 2001:db8:1::b;" in text
    # This BIRD must never touch a route: no kernel, static or BGP protocol.
    protocols = {line.split()[1] for line in text.splitlines() if line.startswith("protocol")}
    assert protocols == {"device", "bfd"}


def test_the_sessions_are_read_per_peer_with_their_age() -> None:
    got = parse_sessions(SESSIONS, now=datetime(2026, 12, 3, 7, 12, 1))
    assert got["2001:db8::2"] == {"status": "up", "up_for": 30.0, "down_for": None}
    assert got["192.0.2.9"] == {"status": "down", "up_for": None, "down_for": 30.0}
    assert got["192.0.2.2"]["up_for"] == 120.0
    assert set(got) == {"2001:db8::2", "192.0.2.9", "192.0.2.2"}
    assert parse_sessions("raftlb:\nIP address  Interface  State  Since  Interval  Timeout") == {}


async def serve(path: Path, answers: dict[str, bytes], seen: list[str]) -> asyncio.Server:
    """A control socket speaking BIRD's protocol: a greeting, then coded lines per command."""

    async def daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"0001 BIRD 2.0.12 ready.\n")
        await writer.drain()
        command = (await reader.readline()).decode().strip()
        seen.append(command)
        body = answers[command]
        for i in range(0, len(body), 7):  # in pieces, as a socket may deliver it
            writer.write(body[i : i + 7])
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(daemon, path=str(path))


async def test_the_control_protocol_reads_coded_and_continued_lines_to_the_last(
    tmp_path: Path,
) -> None:
    lines = SESSIONS.splitlines()
    wire = f"1020-{lines[0]}\n" + "".join(f" {line}\n" for line in lines[1:]) + "0000 \n"
    answers = {
        "show bfd sessions": wire.encode(),
        "show bfd session": b"9001 syntax error, unexpected CF_SYM_UNDEFINED\n",
    }
    seen: list[str] = []
    path = tmp_path / "bird.ctl"
    server = await serve(path, answers, seen)
    try:
        answer = await birdc(path, "show bfd sessions")
        with pytest.raises(BirdError, match="syntax error"):
            await birdc(path, "show bfd session")
    finally:
        server.close()
    assert seen == ["show bfd sessions", "show bfd session"]
    assert parse_sessions(answer)["192.0.2.2"]["status"] == "up"
