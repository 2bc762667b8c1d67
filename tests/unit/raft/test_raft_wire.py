"""The Raft connection's read bounds (raft/wire.py), on bytes."""

from __future__ import annotations

import struct

import pytest

from raft import wire


def frame(length: int, body: bytes = b"") -> bytes:
    return struct.pack("i", length) + body


@pytest.mark.parametrize(
    ("buffer", "trusted", "refused"),
    [
        (b"", False, False),
        (b"\x01\x00", False, False),  # not even a length yet
        (frame(300, b"x" * 100), False, False),  # a handshake arriving
        (frame(wire.FIRST_FRAME_MAX + 1), False, True),  # too big before authenticating
        (frame(2**31 - 1), False, True),
        (frame(2**31 - 1), True, True),
        (frame(-5), True, True),
        (frame(wire.FRAME_MAX), True, False),  # an entry of up to 32 MiB from a peer
        (frame(wire.FRAME_MAX + 1), True, True),
        # Several small frames queued up before the first one authenticated: bounded too.
        (frame(100) + b"x" * (wire.FIRST_FRAME_MAX + 100), False, True),
        (b"GET / HTTP/1.1\r\n", False, True),  # "GET " is a length of 542 MB
    ],
)
def test_frame_bounds(buffer: bytes, trusted: bool, refused: bool) -> None:
    assert (wire.frame_problem(buffer, trusted) is not None) == refused


def test_install_wraps_pysyncobj_once() -> None:
    from pysyncobj.tcp_connection import TcpConnection

    wire.install()
    read = TcpConnection._TcpConnection__processRead
    wire.install()
    assert TcpConnection._TcpConnection__processRead is read
    assert read.__name__ == "guarded_read"
