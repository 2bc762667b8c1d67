"""The failover prober: requests on a fixed schedule, one Sample each, plus the neighbour MAC.

Run as `python -m appliance.lab.prober --target ADDR --port P --proto http|tcp|udp
[--interval 0.01] [--timeout 0.2] [--duration SECONDS] [--out FILE.jsonl]
[--neighbour/--no-neighbour]`.

Request k is sent at start + k * interval, each in its own task, so a hanging request never
delays the next one. When the loop wakes up more than a whole interval late, the missed slots
are skipped, not sent in a burst: a late tick shows in the data as a gap between send times
(`outage.send_gaps`). Every request uses a new connection (HTTP: one TCP connection with
`Connection: close`; TCP: one line on a new connection; UDP: one datagram from a new socket), so
after a failover the first request that reaches the new owner is the first success. A request
that has no good answer within `timeout` fails; a stall shorter than the timeout therefore shows
as latency, not as an outage.

With the neighbour reading on (the default), a side task reads the client's neighbour entry for
the target over netlink (pyroute2's AsyncIPRoute; the synchronous IPRoute fails inside a running
event loop) on the same schedule, and each sample carries the MAC last read when it was sent (at
most one interval old). A netlink failure only makes the MAC None for a while.

Samples are written to --out as JSON lines as they complete (in completion order, not send
order), so a killed prober still leaves its data; appliance.lab.outage sorts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import ipaddress
import json
import math
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from appliance.lab.outage import Sample, summary_line

Proto = Literal["http", "tcp", "udp"]
PROTOS: tuple[Proto, ...] = ("http", "tcp", "udp")
MAX_ANSWER = 64 * 1024
NeighbourRead = Callable[[], Awaitable[str | None]]
Record = Callable[[Sample], None]


@dataclass(frozen=True)
class ProbeConfig:
    """What to probe and how often; checked on creation (ValueError names the field)."""

    target: str
    port: int
    proto: Proto = "http"
    interval: float = 0.01
    timeout: float = 0.2
    duration: float | None = None
    neighbour: bool = True

    def __post_init__(self) -> None:
        try:
            address = ipaddress.ip_address(self.target)
        except ValueError:
            raise ValueError(f"target must be an IP address, got {self.target!r}") from None
        object.__setattr__(self, "target", str(address))  # canonical, as netlink reports it
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be within 1-65535, got {self.port}")
        if self.proto not in PROTOS:
            raise ValueError(f"proto must be one of {', '.join(PROTOS)}, got {self.proto!r}")
        if not self.interval > 0:
            raise ValueError(f"interval must be positive, got {self.interval}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be positive, got {self.duration}")

    @property
    def family(self) -> socket.AddressFamily:
        version = ipaddress.ip_address(self.target).version
        return socket.AF_INET6 if version == 6 else socket.AF_INET


class ProbeError(Exception):
    """The target answered, but not with a good answer; the message is the sample's error."""


# ---------------------------------------------------------------------------- one request


def _socket(config: ProbeConfig, kind: socket.SocketKind) -> socket.socket:
    sock = socket.socket(config.family, kind)
    sock.setblocking(False)
    if kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def parse_http_answer(data: bytes) -> tuple[str | None, str | None]:
    """(backend, peer) from a complete HTTP answer; ProbeError unless the status is 200.
    A 200 whose body is not the lab backend's JSON is still a success (backend None)."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise ProbeError("bad http answer")
    if status_line[1] != b"200":
        raise ProbeError(f"http {status_line[1].decode('latin-1')}")
    try:
        info = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(info, dict):
        return None, None
    backend, peer = info.get("backend"), info.get("peer")
    return (
        backend if isinstance(backend, str) else None,
        peer if isinstance(peer, str) else None,
    )


def _http_complete(data: bytes) -> bool:
    """True once the head and Content-Length bytes of body have arrived."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            return value.strip().isdigit() and len(body) >= int(value.strip())
    return False  # no length: the answer ends when the server closes


def parse_echo_answer(data: bytes, sent: bytes) -> tuple[str, str]:
    """(backend, peer) from "NAME PEER SENT"; ProbeError if it is not the answer to `sent`."""
    parts = data.rstrip(b"\n").split(b" ", 2)
    if len(parts) != 3 or parts[2] != sent:
        raise ProbeError("bad echo answer")
    return parts[0].decode(errors="replace"), parts[1].decode(errors="replace")


async def probe_http(config: ProbeConfig, seq: int) -> tuple[str | None, str | None]:
    """One GET on a new connection; (backend, peer) from the answer."""
    loop = asyncio.get_running_loop()
    with _socket(config, socket.SOCK_STREAM) as sock:
        await loop.sock_connect(sock, (config.target, config.port))
        host = f"[{config.target}]" if ":" in config.target else config.target
        request = (
            f"GET /probe/{seq} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: raftlb-prober\r\n"
            "Connection: close\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode("ascii"))
        data = b""
        while not _http_complete(data):
            chunk = await loop.sock_recv(sock, MAX_ANSWER)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_ANSWER:
                raise ProbeError("http answer too long")
        if not data:
            raise ProbeError("closed without answer")
        return parse_http_answer(data)


async def probe_tcp(config: ProbeConfig, seq: int) -> tuple[str, str]:
    """One line on a new connection; (backend, peer) from the echo."""
    loop = asyncio.get_running_loop()
    sent = f"probe {seq}".encode()
    with _socket(config, socket.SOCK_STREAM) as sock:
        await loop.sock_connect(sock, (config.target, config.port))
        await loop.sock_sendall(sock, sent + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = await loop.sock_recv(sock, MAX_ANSWER)
            if not chunk:
                raise ProbeError("closed without answer" if not data else "bad echo answer")
            data += chunk
            if len(data) > MAX_ANSWER:
                raise ProbeError("echo answer too long")
        return parse_echo_answer(data, sent)


async def probe_udp(config: ProbeConfig, seq: int) -> tuple[str, str]:
    """One datagram from a new (connected) socket; (backend, peer) from the echo. Connected, so
    an ICMP port unreachable fails it at once; answers to other requests are ignored."""
    loop = asyncio.get_running_loop()
    sent = f"probe {seq}".encode()
    with _socket(config, socket.SOCK_DGRAM) as sock:
        await loop.sock_connect(sock, (config.target, config.port))
        await loop.sock_sendall(sock, sent)
        while True:
            data = await loop.sock_recv(sock, MAX_ANSWER)
            with contextlib.suppress(ProbeError):
                return parse_echo_answer(data, sent)


_PROBES = {"http": probe_http, "tcp": probe_tcp, "udp": probe_udp}


def error_name(exc: BaseException) -> str:
    """A short, stable name for why a request failed (the Sample's error)."""
    if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
        return "timeout"
    if isinstance(exc, ProbeError):
        return str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    return type(exc).__name__


# ---------------------------------------------------------------------------- neighbour MAC

# Neighbour states without a usable link-layer address (NUD_INCOMPLETE, NUD_FAILED).
_NO_LLADDR_STATES = 0x01 | 0x20


class NeighbourReader:
    """Reads the client's neighbour-table MAC for one address over netlink; None: no entry."""

    def __init__(self, target: str) -> None:
        self.target = str(ipaddress.ip_address(target))
        self.family = socket.AF_INET6 if ":" in self.target else socket.AF_INET
        self._ipr: Any = None

    async def read(self) -> str | None:
        """The MAC of the first usable entry for the target; on any netlink error the socket is
        dropped (a new one is opened next time) and the error raised."""
        if self._ipr is None:
            from pyroute2 import AsyncIPRoute  # 0.2 s to import: only when reading MACs

            self._ipr = AsyncIPRoute()
        mac: str | None = None
        try:
            async for msg in await self._ipr.neigh("dump", family=self.family):
                if mac is None and msg.get("dst") == self.target:
                    lladdr = msg.get("lladdr")
                    if lladdr and not msg["state"] & _NO_LLADDR_STATES:
                        mac = str(lladdr)
        except BaseException:
            self.close()
            raise
        return mac

    def close(self) -> None:
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None


class NeighbourWatch:
    """Keeps `current` (the target's MAC) fresh by reading it every `interval` seconds."""

    def __init__(self, read: NeighbourRead, interval: float, timeout: float = 0.5) -> None:
        self._read = read
        self.interval = interval
        self.timeout = max(timeout, interval)
        self.current: str | None = None
        self.errors = 0
        self.last_error: str | None = None

    async def refresh(self) -> None:
        """One read; a failure or a hang sets current to None and is counted, never raised."""
        try:
            async with asyncio.timeout(self.timeout):
                self.current = await self._read()
        except Exception as exc:
            self.current = None
            self.errors += 1
            if self.last_error is None:
                print(f"prober: neighbour read failed: {exc!r}", file=sys.stderr, flush=True)
            self.last_error = repr(exc)

    async def run(self) -> None:
        """Read on a fixed schedule until cancelled; after a failure, wait 0.1 s at least."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        k = 1
        while True:
            errors = self.errors
            delay = start + k * self.interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.refresh()
            if self.errors > errors:
                await asyncio.sleep(0.1)
            k = max(k + 1, math.floor((loop.time() - start) / self.interval) + 1)


# ---------------------------------------------------------------------------- the schedule


class Prober:
    """Sends one request every `config.interval` seconds and records one Sample per request.

    `record` is called with each sample as it completes (e.g. a file writer). `neighbour` reads
    the target's MAC; by default a NeighbourReader when config.neighbour is on. `freeze_gc`
    (for a process that only probes, like the CLI) moves all objects alive at the start out of
    the garbage collector's reach (gc.freeze), so full collections stay short.
    """

    def __init__(
        self,
        config: ProbeConfig,
        record: Record | None = None,
        neighbour: NeighbourRead | None = None,
        freeze_gc: bool = False,
    ) -> None:
        self.config = config
        self._freeze_gc = freeze_gc
        self.samples: list[Sample] = []
        self._record = record
        self._reader: NeighbourReader | None = None
        if neighbour is None and config.neighbour:
            self._reader = NeighbourReader(config.target)
            neighbour = self._reader.read
        self.watch = NeighbourWatch(neighbour, config.interval) if neighbour else None
        self._ask = _PROBES[config.proto]
        self._in_flight: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self._failure: BaseException | None = None

    def stop(self) -> None:
        """Send no more requests; `run` returns once those in flight are done. Safe to call
        from a signal handler and before `run`."""
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()

    async def run(self) -> list[Sample]:
        """Probe until config.duration has elapsed or `stop` is called; return all samples
        (in completion order)."""
        watcher: asyncio.Task[None] | None = None
        if self.watch is not None:
            await self.watch.refresh()  # the first samples already carry a MAC
            watcher = asyncio.create_task(self.watch.run())
        if self._freeze_gc:
            # Everything alive now (modules, pyroute2) lives forever: keep it out of the full
            # collections, which otherwise stall the schedule ~8 ms every few seconds.
            gc.collect()
            gc.freeze()
        self._ticker = asyncio.create_task(self._tick())
        if self._stopping:
            self._ticker.cancel()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError
            while self._in_flight:  # each ends within the timeout
                await asyncio.gather(*self._in_flight)
        finally:
            self._ticker.cancel()
            for task in self._in_flight:
                task.cancel()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if self._reader is not None:
                self._reader.close()
        if self._failure is not None:
            raise self._failure
        return self.samples

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        start = loop.time()
        end = math.inf if self.config.duration is None else start + self.config.duration
        k = 0
        while not self._stopping:
            due = start + k * interval
            if due >= end:
                return
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay >= interval:
                # a whole slot late: send now for the slot we are in, skip the missed ones
                k = math.floor((loop.time() - start) / interval)
                if start + k * interval >= end:
                    return
            task = loop.create_task(self._probe(k))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            k += 1

    async def _probe(self, seq: int) -> None:
        t = time.monotonic()
        mac = self.watch.current if self.watch is not None else None
        try:
            async with asyncio.timeout(self.config.timeout):
                backend, peer = await self._ask(self.config, seq)
            sample = Sample(
                t=t,
                ok=True,
                latency=time.monotonic() - t,
                backend=backend,
                peer=peer,
                mac=mac,
            )
        except Exception as exc:  # timeout, refused, bad answer...: a failed sample, not a crash
            sample = Sample(t=t, ok=False, mac=mac, error=error_name(exc))
        self.samples.append(sample)
        if self._record is not None:
            try:
                self._record(sample)
            except Exception as exc:  # e.g. disk full: stop rather than lose data silently
                if self._failure is None:
                    self._failure = exc
                self.stop()


# ---------------------------------------------------------------------------- output and CLI


class JsonlWriter:
    """Appends samples to a file, one JSON line each, flushed line by line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, sample: Sample) -> None:
        self.stream.write(sample.to_json() + "\n")
        self.stream.flush()


def read_samples(path: Path) -> list[Sample]:
    """The samples of a .jsonl file the prober wrote (a torn last line is dropped)."""
    from appliance.lab.outage import parse_samples

    with path.open(encoding="utf-8") as stream:
        return parse_samples(stream)


async def probe(config: ProbeConfig, out: Path | None = None) -> list[Sample]:
    """Run a prober that stops on SIGTERM/SIGINT, writing samples to `out` as they complete."""
    loop = asyncio.get_running_loop()
    with contextlib.ExitStack() as stack:
        record: Record | None = None
        if out is not None:
            record = JsonlWriter(stack.enter_context(out.open("w", encoding="utf-8")))
        prober = Prober(config, record=record, freeze_gc=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, prober.stop)
            stack.callback(loop.remove_signal_handler, signum)
        samples = await prober.run()
        if prober.watch is not None and prober.watch.errors:
            print(
                f"prober: {prober.watch.errors} neighbour reads failed, last: "
                f"{prober.watch.last_error}",
                file=sys.stderr,
                flush=True,
            )
        return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.lab.prober",
        description="Probe a target on a fixed schedule and report outages.",
    )
    parser.add_argument("--target", required=True, help="IP address to probe (e.g. the VIP)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--proto", choices=PROTOS, default="http")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between requests")
    parser.add_argument("--timeout", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--duration", type=float, help="seconds to run (default: until TERM)")
    parser.add_argument("--out", type=Path, help="JSON lines file for the samples")
    parser.add_argument(
        "--neighbour",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record the client's neighbour MAC for the target (default: on)",
    )
    args = parser.parse_args(argv)
    try:
        config = ProbeConfig(
            target=args.target,
            port=args.port,
            proto=args.proto,
            interval=args.interval,
            timeout=args.timeout,
            duration=args.duration,
            neighbour=args.neighbour,
        )
    except ValueError as exc:
        parser.error(str(exc))
    samples = asyncio.run(probe(config, args.out))
    print(f"prober {config.proto} {config.target}:{config.port}: {summary_line(samples)}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
