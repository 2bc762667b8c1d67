"""The layer-2 announcer: answers ARP and IPv6 NS for the VIPs this node holds, from userspace.

The kernel never answers for a VIP (the VIP is not configured on the data interface; nodes run
with arp_ignore=1/arp_announce=2), so answering ends the moment this agent stops: a crashed
agent answers nothing, and a frozen one re-reads `time.monotonic()` before every frame after it
thaws, so it never answers on a stale lease. The decisions are in `announce.l2_logic`; this
module reads the clock, owns the socket and the thread.

One AF_PACKET socket per interface does everything: a classic BPF filter lets only ARP requests
and NS in, PACKET_IGNORE_OUTGOING hides our own frames, and the solicited-node groups of held
IPv6 VIPs are joined on it so a NIC's multicast filter lets their NS through. A thread polls it
and answers; `set()` sends the takeover burst itself, so a takeover is announced before `set()`
returns. Every send happens under one lock after the lease check, so once `set()` dropped a VIP,
or `clear()`/`close()` returned, not one more frame for it leaves this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import math
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, Protocol

from announce import frames
from announce.l2_logic import STATS, Change, L2State, Schedule, Vip
from appliance.tally import listed

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
ARPHRD_ETHER = 1
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_MR_MULTICAST = 0
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
SIOCGIFINDEX = 0x8933
# Frames for other hosts (promiscuous mode) and our own outgoing ones are never answered.
_ANSWERED = frozenset({socket.PACKET_HOST, socket.PACKET_BROADCAST, socket.PACKET_MULTICAST})
_RECV_BATCH = 64
_IDLE_POLL_MS = 1000

STAT_KEYS = tuple(STATS)  # counters (described in STATS); stats() adds `held`


class VipAnnouncer(Protocol):
    """What the agent needs of a layer-2 announcer (real or fake)."""

    def set(self, vips: Iterable[Vip], valid_until: float) -> None: ...
    def extend(self, valid_until: float) -> None: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...
    def held(self) -> frozenset[Vip]: ...
    def stats(self) -> dict[str, int]: ...
    def status(self) -> dict[str, Any]: ...


def _ifindex(sock: socket.socket, interface: str) -> int:
    # Asked through the socket itself, so it is the index in the socket's network namespace
    # whatever namespace the calling thread is in.
    req = struct.pack("16si", interface.encode(), 0)
    return int(struct.unpack("16si", fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, req))[1])


def _open_socket(interface: str) -> socket.socket:
    # Protocol 0 receives nothing until bind(), so the filter is in place before any frame.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        program = b"".join(struct.pack("HBBI", *ins) for ins in frames.SOCKET_FILTER)
        buf = ctypes.create_string_buffer(program, len(program))
        fprog = struct.pack("HP", len(frames.SOCKET_FILTER), ctypes.addressof(buf))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        # Before Linux 4.20 this fails; outgoing frames are then dropped by their packet type.
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.bind((interface, ETH_P_ALL))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot open a packet socket on {interface}: {exc}") from exc
    return sock


def _order(vip: Vip) -> tuple[int, int]:
    return vip.version, int(vip)


class L2Announcer:
    """Answers ARP/NS for held VIPs on `interface` and announces takeovers (thread-safe)."""

    def __init__(
        self,
        interface: str,
        mac: str | None = None,
        refresh_interval: float = 10.0,
        burst: int = 3,
        repeats: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0),
    ) -> None:
        """Open the socket on `interface` (in the calling thread's network namespace) and start
        the answering thread. `mac` overrides the interface's address as the answered MAC."""
        self.interface = interface
        self._state = L2State(Schedule(burst, tuple(repeats), refresh_interval))
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._groups: set[bytes] = set()
        self._closed = False
        self._silenced = False  # silence(): answer and announce nothing until close()
        self._send_failing = False
        # Where the lease's end can be read without the caller's other threads (the agent's
        # lease cell): asked, the lock held, once the deadline has passed with VIPs still held.
        # A later end from it means the lease never ended (the caller's renewal was late, not
        # missing), so the VIPs are kept: no lapse, nothing announced anew. It must take no lock.
        self.lease_source: Callable[[], float] | None = None
        self._sock = _open_socket(interface)
        try:
            self._ifindex = _ifindex(self._sock, interface)
            _, _, _, hatype, hwaddr = self._sock.getsockname()
            if hatype != ARPHRD_ETHER:
                raise ValueError(f"{interface} is not an Ethernet interface (type {hatype})")
            self.mac = frames.mac_bytes(mac) if mac is not None else bytes(hwaddr)
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            self._sock.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"l2-announce-{interface}", daemon=True
        )
        self._thread.start()
        log.info("l2 %s: answering as %s", interface, frames.mac_str(self.mac))

    # --- the interface ---------------------------------------------------------------------

    def set(self, vips: Iterable[Vip], valid_until: float) -> None:
        """Hold exactly `vips` until `valid_until` (a time.monotonic() deadline, the lease end).

        Idempotent; call it again on every renewal. New VIPs are announced before it returns;
        dropped ones are not answered any more once it returns.
        """
        wanted = list(vips)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"l2 announcer on {self.interface} is closed")
            if self._silenced:
                return
            now = time.monotonic()
            self._prolong(now)  # a late caller is not a lapse if the lease never ended
            change = self._state.set(wanted, valid_until, now)
            self._count(change)
            self._sync_groups()
            self._announce_due()
            if change.taken:
                self._wake()  # so the thread plans the first repeat
        self._log(change, "dropped by set()")

    def extend(self, valid_until: float) -> None:
        """Keep the VIPs of the last `set()` until a new deadline (a lease renewal): O(1) while
        the lease is valid, so renewals cost nothing whatever the number of VIPs held."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"l2 announcer on {self.interface} is closed")
            if self._silenced:
                return
            now = time.monotonic()
            self._prolong(now)
            change = self._state.extend(valid_until, now)
            if change:
                self._count(change)
                self._sync_groups()
                self._announce_due()
                if change.taken:
                    self._wake()
        self._log(change, "dropped by extend()")

    def clear(self) -> None:
        """Stop answering and announcing everything at once."""
        with self._lock:
            if self._closed:
                return
            change = self._state.clear(time.monotonic())
            self._count(change)
            self._sync_groups()
        self._log(change, "cleared")

    def silence(self) -> None:
        """Stop answering and announcing at once, for good: later set() and extend() calls
        (a reconcile still running while the agent stops) change nothing. Thread-safe; the
        socket and thread stay until close()."""
        with self._lock:
            if self._closed or self._silenced:
                return
            self._silenced = True
            change = self._state.clear(time.monotonic())
            self._count(change)
            self._sync_groups()
        self._log(change, "silenced: the agent is stopping")

    def close(self) -> None:
        """Clear, stop the thread, close the socket (idempotent)."""
        with self._lock:
            if self._closed:
                return
            change = self._state.clear(time.monotonic())
            self._count(change)
            self._closed = True
            self._wake()
        self._log(change, "closed")
        self._thread.join(timeout=5.0)
        self._sock.close()  # also leaves the multicast groups
        os.close(self._wake_r)
        os.close(self._wake_w)

    def held(self) -> frozenset[Vip]:
        """The VIPs answered right now (empty once the lease has ended)."""
        with self._lock:
            return self._state.held(time.monotonic())

    def stats(self) -> dict[str, int]:
        """Counters (see STAT_KEYS) and `held`, the number of VIPs answered now."""
        with self._lock:
            out = dict(self._stats)
            out["held"] = len(self._state.held(time.monotonic()))
            return out

    def status(self) -> dict[str, Any]:
        """What /v1/status shows: the interface and `stats()`."""
        return {"interface": self.interface, **self.stats()}

    # --- sending (lock held) -----------------------------------------------------------------

    def _send_checked(self, vip: Vip, frame: bytes) -> bool:
        # The lease is re-read from the clock right before each frame, whatever the caller saw.
        now = time.monotonic()
        if not self._state.should_answer(vip, now) and not (
            self._prolong(now) and self._state.should_answer(vip, now)
        ):
            if self._state.is_wanted(vip):
                self._stats["stale_refusals"] += 1
            return False
        try:
            self._sock.send(frame)
        except OSError as exc:
            self._stats["send_errors"] += 1
            if not self._send_failing:
                log.warning("l2 %s: cannot send for %s: %s", self.interface, vip, exc)
            self._send_failing = True
            return False
        self._send_failing = False
        return True

    def _prolong(self, now: float) -> bool:  # lock held
        source = self.lease_source
        if source is None or self._state.deadline() > now:
            return False
        return self._state.prolong(source(), now)

    def _announce_due(self) -> None:
        for vip, copies in self._state.due(time.monotonic()):
            batch: tuple[bytes, ...]
            if isinstance(vip, IPv4Address):
                batch = (frames.garp_request(self.mac, vip), frames.garp_reply(self.mac, vip))
                key = "garp_sent"
            else:
                batch = (frames.unsolicited_na(self.mac, vip),)
                key = "na_sent"
            for _ in range(copies):
                for frame in batch:
                    if self._send_checked(vip, frame):
                        self._stats[key] += 1

    def _sync_groups(self) -> None:
        held = self._state.held(time.monotonic())
        wanted = {
            frames.multicast_mac(frames.solicited_node(v))
            for v in held
            if isinstance(v, IPv6Address)
        }
        for mac, op in [(m, PACKET_ADD_MEMBERSHIP) for m in wanted - self._groups] + [
            (m, PACKET_DROP_MEMBERSHIP) for m in self._groups - wanted
        ]:
            mreq = struct.pack("iHH8s", self._ifindex, PACKET_MR_MULTICAST, 6, mac)
            try:
                self._sock.setsockopt(SOL_PACKET, op, mreq)
            except OSError as exc:
                self._stats["membership_errors"] += 1
                name = frames.mac_str(mac)
                log.error("l2 %s: multicast %s failed: %s", self.interface, name, exc)
                continue
            if op == PACKET_ADD_MEMBERSHIP:
                self._groups.add(mac)
            else:
                self._groups.discard(mac)

    def _count(self, change: Change) -> None:
        self._stats["takeovers"] += len(change.taken)
        self._stats["releases"] += len(change.released)
        self._stats["lapses"] += len(change.lapsed)

    def _log(self, change: Change, why: str) -> None:
        # One line per kind of change, whatever the number of VIPs (appliance.tally.listed).
        if change.lapsed:
            log.warning(
                "l2 %s: release %s (lease ended without renewal)",
                self.interface,
                listed(sorted(change.lapsed, key=_order)),
            )
        if change.released:
            vips = listed(sorted(change.released, key=_order))
            log.info("l2 %s: release %s (%s)", self.interface, vips, why)
        if change.taken:
            log.info("l2 %s: take %s", self.interface, listed(sorted(change.taken, key=_order)))

    def _wake(self) -> None:
        # Called with the lock held, so never after close() released the pipe.
        with contextlib.suppress(BlockingIOError):  # pipe full: it is awake anyway
            os.write(self._wake_w, b"\x00")

    # --- the answering thread ----------------------------------------------------------------

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        buf = bytearray(2048)
        while True:
            try:
                with self._lock:
                    if self._closed:
                        return
                    now = time.monotonic()
                    self._prolong(now)
                    change = Change(lapsed=self._state.expire(now))
                    if change:
                        self._count(change)
                        self._sync_groups()
                    self._announce_due()
                    wakeup = self._state.next_wakeup()
                self._log(change, "lapsed")
                wait = wakeup - time.monotonic()
                timeout = _IDLE_POLL_MS if wait > 1.0 else max(0, math.ceil(wait * 1000))
                for fd, _ in poller.poll(timeout):
                    if fd == self._wake_r:
                        self._drain_wake()
                    else:
                        self._receive(buf)
            except Exception:
                # Never die silently: a dead thread answers nothing while the VIP is held.
                log.exception("l2 %s: answering loop failed; going on", self.interface)
                time.sleep(0.05)

    def _receive(self, buf: bytearray) -> None:
        view = memoryview(buf)
        for _ in range(_RECV_BATCH):
            try:
                size, addr = self._sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ENETDOWN when the link goes down; reported once
                with self._lock:
                    self._stats["recv_errors"] += 1
                log.warning("l2 %s: receive failed: %s", self.interface, exc)
                return
            if addr[2] not in _ANSWERED:
                continue
            msg = frames.parse(bytes(view[:size]))
            if msg is None:
                continue
            if isinstance(msg, frames.ArpRequest):
                self._on_arp(msg)
            else:
                self._on_ns(msg)

    def _on_arp(self, req: frames.ArpRequest) -> None:
        vip = req.target_ip
        conflict = False
        with self._lock:
            self._stats["arp_requests"] += 1
            if not self._state.is_wanted(vip):
                return
            if req.is_gratuitous:
                # Someone else announcing our VIP: the invariant is broken somewhere. Never
                # answer an announcement; count it and say so.
                conflict = self._state.claimed_elsewhere(
                    vip, req.sender_mac, self.mac, time.monotonic()
                )
                self._stats["conflicts"] += int(conflict)
            elif self._send_checked(vip, frames.arp_reply(self.mac, vip, req)):
                self._stats["arp_replies"] += 1
        if conflict:
            log.warning(
                "l2 %s: %s announces %s, which we hold",
                self.interface,
                frames.mac_str(req.sender_mac),
                vip,
            )

    def _on_ns(self, ns: frames.NeighborSolicitation) -> None:
        vip = ns.target
        conflict = False
        with self._lock:
            self._stats["ns_seen"] += 1
            if not self._state.is_wanted(vip):
                return
            # A DAD probe from another MAC: someone is configuring our VIP. We defend it (the
            # reply below), and count it whether or not the reply leaves.
            conflict = ns.source_ip.is_unspecified and self._state.claimed_elsewhere(
                vip, ns.eth_source, self.mac, time.monotonic()
            )
            self._stats["conflicts"] += int(conflict)
            if self._send_checked(vip, frames.na_reply(self.mac, vip, ns)):
                self._stats["na_replies"] += 1
        if conflict:
            log.warning(
                "l2 %s: %s probes %s (DAD), which we hold",
                self.interface,
                frames.mac_str(ns.eth_source),
                vip,
            )


if TYPE_CHECKING:
    _conforms: type[VipAnnouncer] = L2Announcer
