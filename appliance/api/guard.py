"""Bounds on the API's connections, before any authentication: how many, and how long one may
stay open without asking anything.

aiohttp keeps an idle connection for an hour (keepalive 3,630 s) and waits for slow headers
(slowloris) or a slow body forever: at the open-file limit the API died for 30 s, accept errors
filled the log and the Raft tick could not write its journal. The guard wraps each connection's
protocol:
- at most `max_connections` at once; at the limit a new connection takes the place of the one
  that has been idle longest (so a crowd of idle connections cannot lock a client out), and is
  closed at once only when all of them are busy with a request;
- a connection must start a request (its head parsed and routed) within `idle` seconds of
  opening and of its previous answer, else it is closed: idle keep-alives and slowloris alike;
- bodies are read within the handler's own timeout (appliance.api.app).
Refusals are counted and logged once per `log_every` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import Any

from appliance.tally import Tally

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 1000
IDLE_SECONDS = 10.0


def api_connection_limit(reserve: int = 512) -> int:
    """Raise this process's soft open-file limit to the hard one, and return how many API
    connections to allow so that `reserve` descriptors always remain for Raft, its journal,
    nftables and health checks (the Raft tick failed `storeMeta: Too many open files`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d (%s); it stays %d", want, exc, soft)
    return max(16, min(MAX_CONNECTIONS, soft - reserve))


class ConnectionGuard:
    def __init__(
        self,
        max_connections: int = MAX_CONNECTIONS,
        idle: float = IDLE_SECONDS,
        log_every: float = 10.0,
    ) -> None:
        self.max_connections, self.idle, self.log_every = max_connections, idle, log_every
        self.open: dict[int, _Guarded] = {}  # id(transport) -> its connection
        self.idle_since: dict[int, _Guarded] = {}  # the idle ones, longest idle first
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0
        self._tally = Tally(log_every)

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` around aiohttp's."""
        return lambda: _Guarded(self, inner())

    # -- called by the API's middleware ---------------------------------------------------------

    def request_started(self, transport: Any) -> None:
        conn = self.open.get(id(transport))
        if conn is not None:
            conn.busy += 1
            conn.disarm()
            self.idle_since.pop(id(transport), None)

    def request_done(self, transport: Any) -> None:
        conn = self.open.get(id(transport))
        if conn is not None:
            conn.busy -= 1
            if conn.busy == 0:
                conn.arm()

    # -- bookkeeping ------------------------------------------------------------------------------

    def note(self, what: str) -> None:
        due = self._tally.add(what)
        if due is None:
            return
        counts, span = due
        log.warning(
            "API: closed connections in the last %.0f s: %s (at most %d open, each must "
            "send a request within %.0f s); %d open now",
            span,
            ", ".join(f"{n} {w}" for w, n in sorted(counts.items())),
            self.max_connections,
            self.idle,
            len(self.open),
        )


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol, with a deadline for its next request."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard, self.inner = guard, inner
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.busy = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        guard = self.guard
        if len(guard.open) >= guard.max_connections:
            if not guard.idle_since:
                guard.refused += 1
                guard.note("over the connection limit, all busy")
                transport.abort()  # type: ignore[attr-defined]
                return
            oldest = next(iter(guard.idle_since.values()))
            guard.evicted += 1
            guard.note("idle, to make room at the connection limit")
            oldest.close()
        guard.open[id(transport)] = self
        self.inner.connection_made(transport)
        self.arm()

    def arm(self) -> None:
        self.disarm()
        self.timer = asyncio.get_running_loop().call_later(self.guard.idle, self._expired)
        if self.transport is not None:  # to the end of the idle order
            self.guard.idle_since.pop(id(self.transport), None)
            self.guard.idle_since[id(self.transport)] = self

    def close(self) -> None:
        """Abort the connection and forget it now (its connection_lost comes later)."""
        self.disarm()
        if self.transport is not None:
            key = id(self.transport)
            self.guard.idle_since.pop(key, None)
            if self.guard.open.pop(key, None) is not None:
                self.transport.abort()  # type: ignore[attr-defined]
                self.inner.connection_lost(None)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.busy == 0:
            self.guard.timed_out += 1
            self.guard.note("idle or too slow to send a request")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.transport is None:
            return
        key = id(self.transport)
        self.guard.idle_since.pop(key, None)
        if self.guard.open.pop(key, None) is not None:  # else refused, or closed already
            self.inner.connection_lost(exc)

    # -- everything else goes to aiohttp ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
