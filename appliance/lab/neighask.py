"""Who answers ARP / neighbour solicitations for a VIP, seen from the client's wire.

`NeighbourAsker` owns one raw socket on an interface of the namespace it was made in. It sends
ARP requests (IPv4) and neighbour solicitations (IPv6) whose sender MAC carries a unique request
id (02:fe + 4 bytes), and, the socket being promiscuous, collects every reply addressed to such a
MAC. So each reply names the request it answers and the MAC that answered: two nodes answering
for one VIP show up as one request answered by two MACs, or as answers that alternate between
MACs. The sender address of the ARP requests is off every lab subnet, so no host learns a
neighbour entry from them (the client's own neighbour table is left to the kernel).

The analysis (`reply_runs`, `double_answers`) is pure; the benchmark and the lab tests use it.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from announce import frames

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
ID_PREFIX = b"\x02\xfe"
ID_SENDER4 = IPv4Address("198.51.100.7")  # off the LAN: no host learns a neighbour from it
ID_SENDER6_BASE = int(IPv6Address("2001:db8:1::ff:0"))

Vip = IPv4Address | IPv6Address


def id_mac(ident: int) -> bytes:
    return ID_PREFIX + ident.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class Reply:
    """Request `ident` for `vip` was answered by `mac`, arriving at `at` (monotonic)."""

    ident: int
    vip: str
    mac: str
    at: float


def parse_reply(frame: bytes, now: float) -> Reply | None:
    """An ARP reply or neighbour advertisement sent to one of our id MACs, else None."""
    if frame[0:2] != ID_PREFIX or len(frame) < 42:
        return None
    ident = int.from_bytes(frame[2:6], "big")
    owner = frames.mac_str(frame[6:12])
    if frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02":
        return Reply(ident, str(IPv4Address(frame[28:32])), owner, now)
    if len(frame) >= 78 and frame[12:14] == b"\x86\xdd" and frame[20] == 58 and frame[54] == 136:
        return Reply(ident, str(IPv6Address(frame[62:78])), owner, now)
    return None


class NeighbourAsker:
    """A raw socket on `interface` that asks for VIPs with numbered requests (not thread-safe)."""

    def __init__(self, interface: str = "eth0") -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.bind((interface, ETH_P_ALL))
            index = socket.if_nametoindex(interface)
            mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
            self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            self.sock.settimeout(0.001)
        except OSError:
            self.sock.close()
            raise
        self.next_id = 1
        self.sent: dict[int, tuple[str, float]] = {}  # id -> (vip, send time)
        self.replies: list[Reply] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, vip: Vip) -> int:
        ident = self.next_id
        self.next_id += 1
        mac = id_mac(ident)
        if isinstance(vip, IPv4Address):
            frame = frames.arp_request(mac, ID_SENDER4, vip)
        else:
            source = IPv6Address(ID_SENDER6_BASE + (ident & 0xFFFF))
            frame = frames.neighbor_solicitation(mac, source, vip)
        self.sent[ident] = (str(vip), time.monotonic())
        self.sock.send(frame)
        return ident

    def collect(self, seconds: float) -> None:
        """Read replies for `seconds` (at least one read)."""
        end = time.monotonic() + seconds
        while True:
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                frame = b""
            now = time.monotonic()
            reply = parse_reply(frame, now) if frame else None
            if reply is not None and reply.ident in self.sent:
                self.replies.append(reply)
            if now >= end:
                return

    def ask(self, vip: Vip, timeout: float = 0.2) -> tuple[str, float] | None:
        """One request; (answering MAC, round trip) of the first reply, or None."""
        ident = self.send(vip)
        start = self.sent[ident][1]
        seen = len(self.replies)
        while time.monotonic() < start + timeout:
            self.collect(0.0)
            for reply in self.replies[seen:]:
                if reply.ident == ident:
                    return reply.mac, reply.at - start
        return None

    def probe(self, vips: Sequence[Vip], duration: float, interval: float = 0.01) -> None:
        """Ask for each of `vips` in turn every `interval` for `duration`, recording all."""
        end = time.monotonic() + duration
        i = 0
        while time.monotonic() < end:
            self.send(vips[i % len(vips)])
            i += 1
            self.collect(interval)
        self.collect(0.05)


@dataclass(frozen=True, slots=True)
class Run:
    """Consecutive replies (by arrival) for one VIP from one MAC."""

    mac: str
    first: float
    last: float
    count: int


def reply_runs(replies: Iterable[Reply], vip: str) -> list[Run]:
    """The answering MACs for `vip` in arrival order, one entry per uninterrupted run.

    One owner change gives two runs; anything more (A, B, A...) means two nodes answered in
    turn: two owners at once, or a flap.
    """
    runs: list[Run] = []
    for reply in sorted((r for r in replies if r.vip == vip), key=lambda r: r.at):
        if runs and runs[-1].mac == reply.mac:
            last = runs[-1]
            runs[-1] = Run(last.mac, last.first, reply.at, last.count + 1)
        else:
            runs.append(Run(reply.mac, reply.at, reply.at, 1))
    return runs


def double_answers(replies: Iterable[Reply]) -> dict[int, set[str]]:
    """Requests answered by more than one MAC: id -> the MACs."""
    by_id: dict[int, set[str]] = {}
    for reply in replies:
        by_id.setdefault(reply.ident, set()).add(reply.mac)
    return {ident: macs for ident, macs in by_id.items() if len(macs) > 1}
