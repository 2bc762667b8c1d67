"""BFD beside exabgp, the parts that need no namespace: bfdd's config, its answers, its vty."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from announce.bfd import BfdPeer, parse_peers, render_bfdd, vty


def test_one_single_hop_session_per_peer_from_its_source() -> None:
    peers = [
        BfdPeer(IPv4Address("192.0.2.1"), IPv4Address("192.0.2.11"), 100, 3),
        BfdPeer(IPv6Address("2001:db8:1::1"), IPv6Address("2001:db8:1::b"), 50, 5),
    ]
    assert render_bfdd(peers) == (
        "bfd\n"
        " peer 192.0.2.1 local-address 192.0.2.11\n"
        "  receive-interval 100\n"
        "  transmit-interval 100\n"
        "  detect-multiplier 3\n"
        " exit\n"
        " peer 2001:db8:1::1 local-address 2001:db8:1::b\n"
        "  receive-interval 50\n"
        "  transmit-interval 50\n"
        "  detect-multiplier 5\n"
        " exit\n"
        "exit\n"
    )


def test_bfdds_answer_is_read_per_peer() -> None:
    # As bfdd 8.4 answers `show bfd peers json` (fields trimmed to those read, plus others).
    text = json.dumps(
        [
            {"multihop": False, "peer": "192.0.2.1", "status": "up", "uptime": 12},
            {
                "peer": "192.0.2.2",
                "status": "down",
                "downtime": 3,
                "diagnostic": "control detection time expired",
                "remote-diagnostic": "ok",
            },
            {"no peer": True},
        ]
    )
    got = parse_peers(text)
    assert got["192.0.2.1"]["status"] == "up" and got["192.0.2.1"]["up_for"] == 12
    assert got["192.0.2.2"]["diagnostic"] == "control detection time expired"
    assert set(got) == {"192.0.2.1", "192.0.2.2"}
    with pytest.raises(ValueError):
        parse_peers("% Unknown command")


async def test_the_vty_protocol_enables_then_asks_and_reads_to_the_end_marker(
    tmp_path: Path,
) -> None:
    """FRR's vty socket: commands end in NUL, answers in three NULs and a status byte; a
    show command needs `enable` first on bfdd (`% [BFD] Unknown command` otherwise)."""
    seen: list[str] = []

    async def daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        enabled = False
        while True:
            try:
                raw = await reader.readuntil(b"\0")
            except asyncio.IncompleteReadError:
                break
            command = raw[:-1].decode()
            seen.append(command)
            if command == "enable":
                enabled = True
                writer.write(b"\0\0\0\0")
            elif enabled:
                body = json.dumps([{"peer": "192.0.2.1", "status": "up"}]).encode()
                for i in range(0, len(body), 7):  # in pieces, as a socket may deliver it
                    writer.write(body[i : i + 7])
                    await writer.drain()
                writer.write(b"\0\0\0\0")
            else:
                writer.write(b"% [BFD] Unknown command: " + raw[:-1] + b"\n\0\0\0\2")
            await writer.drain()
        writer.close()

    path = tmp_path / "bfdd.vty"
    server = await asyncio.start_unix_server(daemon, path=str(path))
    try:
        answer = await vty(path, "show bfd peers json")
    finally:
        server.close()
    assert seen == ["enable", "show bfd peers json"]
    assert parse_peers(answer)["192.0.2.1"]["status"] == "up"
