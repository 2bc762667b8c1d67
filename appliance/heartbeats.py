"""The heartbeats of quorum-promise leases (raft/promises.py) over UDP, on their own thread.

Each agent sends every peer a small datagram every `period` from the Raft port's number (UDP;
Raft itself is TCP), and reads theirs. A datagram is an HMAC-SHA256 tag (16 bytes) then
compact JSON; the key is derived from the Raft password, so only cluster members can make a
node promise or give up. The thread does nothing that grows with the state: a lease must not
end because the agent is busy applying thousands of services, so this work stays off the event
loop and off pysyncobj's tick thread. It shares the `Promises` book with the event loop through
`lock`, held only for the book's O(nodes) steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from raft.promises import Echo, Heartbeat, Promises

log = logging.getLogger("raftlb.heartbeats")
TAG = 16
MAX_DATAGRAM = 8192
BAD_LOG_EVERY = 10.0


class HeartbeatError(ValueError):
    """A datagram that is not a valid heartbeat (wrong key, truncated, malformed)."""


def derive_key(password: str) -> bytes:
    # Not the password itself: a tag never lets anyone test guesses against the Raft port.
    return hashlib.sha256(b"raftlb heartbeat key\0" + password.encode()).digest()


def encode(hb: Heartbeat, key: bytes) -> bytes:
    body = json.dumps(
        {
            "s": hb.sender,
            "i": hb.incarnation,
            "e": hb.epoch,
            "q": hb.seq,
            "c": None if hb.echo is None else [hb.echo.incarnation, hb.echo.epoch, hb.echo.seq],
            "p": hb.promised_from,
            "l": hb.leased,
            "a": sorted([n, e] for n, e in hb.abandoned),
            "h": sorted(hb.hears),
        },
        separators=(",", ":"),
    ).encode()
    return hmac.new(key, body, hashlib.sha256).digest()[:TAG] + body


def _int(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise HeartbeatError(f"field {name}: {value!r} is not a non-negative integer")
    return value


def decode(data: bytes, key: bytes) -> Heartbeat:
    tag, body = data[:TAG], data[TAG:]
    if len(data) <= TAG or not hmac.compare_digest(
        tag, hmac.new(key, body, hashlib.sha256).digest()[:TAG]
    ):
        raise HeartbeatError("bad tag: not from a member (another Raft password?)")
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise HeartbeatError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("s"), str):
        raise HeartbeatError("field s: missing sender")
    echo = raw.get("c")
    if echo is not None and (not isinstance(echo, list) or len(echo) != 3):
        raise HeartbeatError(f"field c: {echo!r} is not [incarnation, epoch, seq]")
    abandoned = raw.get("a")
    if not isinstance(abandoned, list) or not all(
        isinstance(a, list) and len(a) == 2 and isinstance(a[0], str) for a in abandoned
    ):
        raise HeartbeatError(f"field a: {abandoned!r} is not [[node, epoch], ...]")
    hears = raw.get("h")
    if not isinstance(hears, list) or not all(isinstance(h, str) for h in hears):
        raise HeartbeatError(f"field h: {hears!r} is not a list of node names")
    if not isinstance(raw.get("l"), bool):
        raise HeartbeatError("field l must be a boolean")
    promised = raw.get("p")
    return Heartbeat(
        sender=raw["s"],
        incarnation=_int(raw.get("i"), "i"),
        epoch=_int(raw.get("e"), "e"),
        seq=_int(raw.get("q"), "q"),
        echo=None if echo is None else Echo(*(_int(v, "c") for v in echo)),
        promised_from=None if promised is None else _int(promised, "p"),
        leased=raw["l"],
        abandoned=frozenset((a[0], _int(a[1], "a")) for a in abandoned),
        hears=frozenset(hears),
    )


class HeartbeatService:
    """The thread that sends, receives and ticks the book."""

    def __init__(
        self,
        book: Promises,
        lock: threading.Lock,
        bind: tuple[str, int],
        peers: Mapping[str, tuple[str, int]],
        password: str,
        period: float,
        on_lease: Callable[[], None] | None = None,
        extend: Callable[[int | None, float], None] | None = None,
        on_sent: Callable[[float], None] | None = None,
    ) -> None:
        self.book, self.lock, self.period = book, lock, period
        self.peers = dict(peers)
        self.key = derive_key(password)
        self.on_lease = on_lease
        self.extend = extend  # (epoch, until): the announcer's deadline, from this thread
        self.on_sent = on_sent  # after each period's heartbeats (the helper's report)
        family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(bind)  # OSError: the caller says which setting to fix
        self.sock.setblocking(False)
        self.sent = self.received = self.rejected = 0
        self._sending = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self._last_bad_log = 0.0
        self._notified_until = float("-inf")
        self._leased = False

    def start(self) -> None:
        self._thread.start()

    def stop_sending(self) -> None:
        """Go silent at once (a stopping agent): the peers' promises end within their window
        and the VIPs move, instead of waiting for the whole orderly stop."""
        self._sending = False

    def close(self) -> None:
        self._sending = False
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self.sock.close()

    def _run(self) -> None:
        next_send = time.monotonic()
        # A tick later than this means this thread was frozen or starved (raft/promises.py).
        stall = max(3 * self.period, self.book.window / 2)
        while not self._stop.is_set():
            now = time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                select.select([self.sock], [], [], max(0.0, next_send - now))
            self._receive_all()
            now = time.monotonic()
            if now >= next_send:
                self._send(now, stall)
                next_send = max(next_send + self.period, now + self.period / 2)

    def _receive_all(self) -> None:
        while True:
            try:
                data, _ = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # closed, or an ICMP error of an earlier send to a peer that is down
            try:
                hb = decode(data, self.key)
            except HeartbeatError as exc:
                self.rejected += 1
                self._log_bad(str(exc))
                continue
            self.received += 1
            with self.lock:
                self.book.receive(time.monotonic(), hb)

    def _send(self, now: float, stall: float) -> None:
        with self.lock:
            self.book.tick(now, stall)
            out = self.book.outgoing(now) if self._sending else {}
            until = self.book.lease_until()
            epoch = self.book.lease_epoch()
            if (until > now) != self._leased:
                self._leased = until > now
                report = self.book.report(now)
                abandoned = sorted(self.book.abandoned())
            else:
                report = None
        if report is not None:
            if self._leased:
                log.info("lease held: promised by a majority (%s)", report)
            else:
                log.warning(
                    "lease ended: fewer than a majority promise this node (%s; given up on: "
                    "%s); check that the peers reach this node on UDP port %d",
                    report,
                    abandoned,
                    self.sock.getsockname()[1],
                )
        for node, hb in out.items():
            address = self.peers.get(node)
            if address is None:
                continue
            with contextlib.suppress(OSError):  # a peer down or unreachable: its problem
                self.sock.sendto(encode(hb, self.key), address)
                self.sent += 1
        if self.extend is not None and until > now:
            self.extend(epoch, min(until, now + self.book.window))
        if self.on_sent is not None:
            self.on_sent(now)
        # Wake the reconciler when the lease starts or ends: it decides what to hold.
        if self.on_lease is not None and (until > now) != (self._notified_until > now):
            self._notified_until = until
            self.on_lease()

    def _log_bad(self, why: str) -> None:
        now = time.monotonic()
        if now - self._last_bad_log >= BAD_LOG_EVERY:
            self._last_bad_log = now
            log.warning(
                "heartbeat refused (%d so far): %s; every agent needs the same Raft password",
                self.rejected,
                why,
            )

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "received": self.received, "rejected": self.rejected}
