"""Long-lived flows through a VIP, and what an event did to them (the driver is I/O, the analysis
pure): for `raftlb lab bench continuity`.

`Flows` keeps N TCP connections and M UDP flows to a VIP's echo ports busy from one thread:
each sends a line (a datagram) every `period` once the previous one was answered, and records
every answer (time, backend) and the time it broke (reset, closed, refused). `verdict` then says,
for an event at `at`, which flows survived (still answered after the event by the backend they
had before it) and the longest stall of a survivor (the longest gap between two answers that
spans the event).
"""

from __future__ import annotations

import contextlib
import itertools
import selectors
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

RESEND = 0.05  # a UDP flow's lost datagram is sent again after this long


@dataclass
class Flow:
    """One connection's (or UDP flow's) history."""

    kind: str  # "tcp" or "udp"
    # (monotonic time, backend, the peer the backend saw: the VIP, or the forwarding node)
    answers: list[tuple[float, str, str]] = field(default_factory=list)
    broke: float | None = None
    why: str = ""
    port: int = 0  # the client's source port


@dataclass(frozen=True)
class Verdict:
    survived: int
    total: int
    longest_stall_s: float  # among survivors, over gaps from the event on
    typical_stall_s: float  # the median gap across the event of the flows answered after it
    moved: int  # answered after the event, but by another backend
    broken: list[str]  # why the ones that broke did

    def as_dict(self) -> dict[str, Any]:
        return {
            "survived": self.survived,
            "total": self.total,
            "survived_pct": round(100 * self.survived / self.total, 2) if self.total else None,
            "longest_stall_ms": round(1000 * self.longest_stall_s, 1),
            "typical_stall_ms": round(1000 * self.typical_stall_s, 1),
            "moved": self.moved,
            "broken": sorted(set(self.broken))[:5],
        }


def verdict(flows: list[Flow], at: float, end: float) -> Verdict:
    """What an event at `at` did to the flows, judged by the answers up to `end`. A flow
    survived if it had an answer before the event, did not break, and was answered after the
    event by the same backend as last before it. A flow's stall is its longest gap between two
    answers from its last one before the event on (the event takes effect some time after
    `at`); `typical_stall_s` is the median flow's, `longest_stall_s` the worst survivor's."""
    survived = moved = 0
    stalls: list[float] = []
    longest = 0.0
    broken = []
    for flow in flows:
        before = [(t, b) for t, b, _ in flow.answers if t <= at]
        after = [(t, b) for t, b, _ in flow.answers if at < t <= end]
        if not before:
            continue
        if flow.broke is not None and flow.broke <= end:
            broken.append(flow.why)
            continue
        if not after:
            broken.append("no answer after the event")
            continue
        times = [before[-1][0], *(t for t, _ in after)]
        stall = max(b - a for a, b in itertools.pairwise(times))
        stalls.append(stall)
        if after[0][1] != before[-1][1]:
            moved += 1
            continue
        survived += 1
        longest = max(longest, stall)
    total = sum(1 for f in flows if any(t <= at for t, _, _ in f.answers))
    typical = statistics.median(stalls) if stalls else 0.0
    return Verdict(survived, total, longest, typical, moved, broken)


def _who(answer: bytes) -> tuple[str, str]:
    """The backend's name and the peer it saw, from an echo answer "NAME PEER DATA"."""
    parts = answer.decode(errors="replace").split(" ", 2)
    return parts[0], parts[1] if len(parts) > 1 else "?"


def peers_before(flows: list[Flow], at: float) -> dict[str, int]:
    """How many flows each peer (the forwarding node, behind masquerade) carried last before
    `at`."""
    counts: dict[str, int] = {}
    for flow in flows:
        last = [p for t, _, p in flow.answers if t <= at]
        if last:
            counts[last[-1]] = counts.get(last[-1], 0) + 1
    return counts


class Flows:
    """Busy flows to `vip`: `connections` TCP connections to `tcp_port` and `udp_flows` UDP
    flows to `udp_port`, each asking every `period` s. Create and run it in the client's
    network namespace (`NetLab.in_ns`); `run(seconds)` drives them, then they stay open for
    the next run until `close`."""

    def __init__(
        self,
        vip: str,
        tcp_port: int,
        udp_port: int,
        connections: int,
        udp_flows: int,
        period: float = 0.01,
    ) -> None:
        family = socket.AF_INET6 if ":" in vip else socket.AF_INET
        self.period = period
        self.selector = selectors.DefaultSelector()
        self.flows: list[Flow] = []
        self._state: dict[int, dict[str, Any]] = {}
        for _ in range(connections):
            sock = socket.create_connection((vip, tcp_port), timeout=5)
            sock.setblocking(False)
            self._add(sock, Flow("tcp"))
        for _ in range(udp_flows):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect((vip, udp_port))
            sock.setblocking(False)
            self._add(sock, Flow("udp"))

    def _add(self, sock: socket.socket, flow: Flow) -> None:
        flow.port = sock.getsockname()[1]
        self.flows.append(flow)
        self._state[sock.fileno()] = {"sock": sock, "flow": flow, "sent": None, "buf": b"", "n": 0}
        self.selector.register(sock, selectors.EVENT_READ, sock.fileno())

    def _break(self, state: dict[str, Any], why: str) -> None:
        flow: Flow = state["flow"]
        if flow.broke is None:
            flow.broke, flow.why = time.monotonic(), why
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(state["sock"])

    def _send(self, state: dict[str, Any], now: float) -> None:
        state["n"] += 1
        data = f"{state['n']}".encode()
        try:
            if state["flow"].kind == "tcp":
                state["sock"].send(data + b"\n")
            else:
                state["sock"].send(data)
        except BlockingIOError:
            return
        except OSError as exc:
            self._break(state, type(exc).__name__)
            return
        state["sent"] = now

    def _receive(self, state: dict[str, Any], now: float) -> None:
        sock: socket.socket = state["sock"]
        flow: Flow = state["flow"]
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            # A UDP flow's ICMP error (no listener) is not the end of it: the next may pass.
            if flow.kind == "tcp":
                self._break(state, type(exc).__name__)
            return
        if flow.kind == "udp":
            flow.answers.append((now, *_who(data)))
            state["sent"] = None
            return
        if not data:
            self._break(state, "closed by the far end")
            return
        state["buf"] += data
        while b"\n" in state["buf"]:
            line, state["buf"] = state["buf"].split(b"\n", 1)
            flow.answers.append((now, *_who(line)))
            state["sent"] = None

    def run(self, seconds: float) -> None:
        """Drive the flows for `seconds`. A datagram not answered within RESEND s is sent again
        (UDP datagrams get lost in a failover; TCP retransmits by itself)."""
        end = time.monotonic() + seconds
        while (now := time.monotonic()) < end:
            for state in self._state.values():
                if state["flow"].broke is not None:
                    continue
                sent = state["sent"]
                last = state["flow"].answers[-1][0] if state["flow"].answers else 0.0
                due = sent is None and now - last >= self.period
                retry = state["flow"].kind == "udp" and sent is not None and now - sent > RESEND
                if due or retry:
                    self._send(state, now)
            for key, _ in self.selector.select(timeout=min(self.period / 2, end - now)):
                self._receive(self._state[key.data], time.monotonic())

    def close(self) -> None:
        for state in self._state.values():
            with contextlib.suppress(OSError):
                state["sock"].close()
        self.selector.close()
