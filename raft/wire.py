"""Bounds on what pysyncobj reads from a Raft connection before and after it authenticates.

pysyncobj reads a 4-byte length and then buffers until that many bytes arrived, whatever the
length says and before any password check: a frame header claiming 2 GB followed by 64 MB took
an agent from 105 to 223 MB, it stopped renewing its leases and its VIPs failed over. Each read
also copies the whole buffer (`buffer += incoming`), so a big frame costs quadratic time on the
tick thread.

`install()` wraps the connection's read so that after every `recv` (at most recvBufferSize,
64 KiB) the buffer is checked: a connection that has not yet delivered one message that
decrypts with the cluster's password may send one frame of at most `FIRST_FRAME_MAX` bytes
(the handshake is a few hundred); after that a frame may be at most `FRAME_MAX` (the largest
legitimate entry is a `/v1/apply` batch of 2 MiB; snapshots go in 64 KiB pieces). Anything else
is disconnected at once, with one log line per `LOG_EVERY` seconds. Incoming connections that
have not identified themselves (the handshake) are bounded in number and time too.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Any

from appliance.tally import Tally
from raft.pysyncobj_lib import (
    CONNECTION_BUFFER,
    CONNECTION_PARSE,
    CONNECTION_READ,
    TcpConnection,
    TCPTransport,
)

log = logging.getLogger(__name__)

FIRST_FRAME_MAX = 64 * 1024
FRAME_MAX = 32 * 1024 * 1024
LOG_EVERY = 10.0
# Incoming connections that have not said who they are: at most this many at once (the oldest
# goes), each for at most this long (pysyncobj kept a silent one open, a descriptor each).
UNKNOWN_MAX = 64
UNKNOWN_SECONDS = 5.0

_READ = CONNECTION_READ
_PARSE = CONNECTION_PARSE
_BUFFER = CONNECTION_BUFFER
_TRUSTED = "_raftlb_trusted"


class _Refusals:
    """Refused connections, logged once per interval (a flood must not flood the log)."""

    def __init__(self) -> None:
        self.count = 0
        self._tally = Tally(LOG_EVERY)

    def refuse(self, why: str) -> None:
        self.count += 1
        due = self._tally.add("refused")
        if due is not None:
            counts, span = due
            log.warning(
                "Raft port: closed %d connection(s) in the last %.0f s (latest: %s); is "
                "something other than a raftlb peer connecting? The firewall lets only peers in "
                "with forward: nftables",
                counts["refused"],
                span,
                why,
            )


refusals = _Refusals()


def frame_problem(buffer: bytes, trusted: bool) -> str | None:
    """Why the bytes buffered so far cannot be (the start of) an acceptable frame, or None."""
    limit = FRAME_MAX if trusted else FIRST_FRAME_MAX
    if len(buffer) >= 4:
        (length,) = struct.unpack("i", buffer[:4])
        if length < 0 or length > limit:
            state = "" if trusted else " before authenticating"
            return f"a frame of {length} bytes{state} (at most {limit})"
    if not trusted and len(buffer) > 4 + FIRST_FRAME_MAX:
        return f"{len(buffer)} bytes before authenticating"
    return None


def install() -> None:
    """Wrap pysyncobj's connection reads (idempotent)."""
    if getattr(TcpConnection, "_raftlb_wire", False):
        return
    read = getattr(TcpConnection, _READ)
    parse = getattr(TcpConnection, _PARSE)

    def guarded_read(self: Any) -> bool:
        more = bool(read(self))
        problem = frame_problem(getattr(self, _BUFFER), getattr(self, _TRUSTED, False))
        if problem is not None:
            refusals.refuse(problem)
            self.disconnect()
            return False
        return more

    def trusting_parse(self: Any) -> Any:
        message = parse(self)
        if message is not None:
            # It decrypted with the cluster's password (or the cluster has none).
            setattr(self, _TRUSTED, True)
        return message

    setattr(TcpConnection, _READ, guarded_read)
    setattr(TcpConnection, _PARSE, trusting_parse)
    _bound_unknown_connections()
    TcpConnection._raftlb_wire = True


def _bound_unknown_connections() -> None:
    incoming = TCPTransport._onNewIncomingConnection
    tick = TCPTransport._onTick

    def on_incoming(self: Any, conn: Any) -> None:
        conn._raftlb_since = time.monotonic()
        unknown = sorted(self._unknownConnections, key=lambda c: getattr(c, "_raftlb_since", 0))
        for old in unknown[: max(0, len(unknown) - UNKNOWN_MAX + 1)]:
            refusals.refuse(f"more than {UNKNOWN_MAX} connections not yet identified")
            old.disconnect()
        incoming(self, conn)

    def on_tick(self: Any) -> None:
        tick(self)
        now = time.monotonic()
        for conn in list(self._unknownConnections):
            if now - getattr(conn, "_raftlb_since", now) > UNKNOWN_SECONDS:
                refusals.refuse(f"not identified within {UNKNOWN_SECONDS:g} s")
                conn.disconnect()

    TCPTransport._onNewIncomingConnection = on_incoming
    TCPTransport._onTick = on_tick
