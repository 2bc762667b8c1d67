"""A lab backend: HTTP, TCP echo and UDP echo that say which backend answered and whom it saw.

Run as `python -m appliance.lab.backend --name b1 [--bind ::] [--http-port 80] [--tcp-port 9000]
[--udp-port 9001]`. Each answer carries the backend's name and the peer address it saw; behind
the appliance's DNAT + masquerade that peer is the appliance node that forwarded the request,
which is how the lab tells which node carried the traffic.

- HTTP: GET (and HEAD) of any path answers 200 with {"backend", "peer", "port"} as JSON and
  `Connection: close`, and the connection is closed: every request of a client takes a new
  connection, so it shows the path traffic takes now, not when a connection was opened. A client
  that sends `Connection: keep-alive` explicitly (benchmark tools, HTTP/1.0 keep-alive) gets
  `Connection: keep-alive` and its requests, pipelined or not, are answered in order.
- TCP: each line is answered with "NAME PEER LINE\\n"; the line `WHO` with "NAME PEER
  conn=N port=P\\n", N counting the connections this backend accepted and P the peer's port.
- UDP: each datagram is answered with "NAME PEER DATA".

Binding "::" turns IPV6_V6ONLY off, so IPv4 clients are served too; their IPv4-mapped addresses
are reported as plain IPv4. A port of 0 picks a free port; the ready line on stdout gives the
ports actually bound. SIGTERM or SIGINT stops it with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import json
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import cast

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

MAX_LINE = 64 * 1024  # longest request line, header line or echo line
MAX_HEADERS = 100
MAX_BODY = 1024 * 1024  # a request body is read and dropped, up to this size
IDLE_TIMEOUT = 60.0  # seconds a connection may wait for its next request or line

_REASONS = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 501: "Not Implemented"}


def plain_address(host: str) -> str:
    """The client address as people write it: IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes a.b.c.d."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _peer_of(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return plain_address(str(peer[0])) if peer else "?"


class _BadRequestError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _response(status: int, body: bytes, keep_alive: bool, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
        f"{extra}\r\n"
    )
    return head.encode("ascii") + body


class Backend:
    """The three servers of one backend; the answers carry `name`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tcp_connections = 0  # accepted by the TCP echo so far

    async def handle_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_of(writer)
        port = writer.get_extra_info("sockname")[1]
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        request = await self._read_request(reader)
                    if request is None:
                        return  # the client closed between requests
                    method, keep_alive = request
                except _BadRequestError as exc:
                    body = json.dumps({"error": str(exc)}).encode() + b"\n"
                    writer.write(_response(exc.status, body, keep_alive=False))
                    await writer.drain()
                    return
                if method in ("GET", "HEAD"):
                    info = {"backend": self.name, "peer": peer, "port": port}
                    body = json.dumps(info).encode() + b"\n"
                    answer = _response(200, body, keep_alive)
                    if method == "HEAD":
                        answer = answer[: len(answer) - len(body)]
                else:
                    body = json.dumps({"error": f"method {method} not allowed"}).encode() + b"\n"
                    answer = _response(405, body, keep_alive, extra="Allow: GET, HEAD\r\n")
                writer.write(answer)
                await writer.drain()
                if not keep_alive:
                    return
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return  # reset, idle too long, or cut mid-request: nothing to answer
        finally:
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, bool] | None:
        """Read one request (its body is dropped); None on a clean EOF before it starts."""
        line = await _read_line(reader)
        while line in (b"\r\n", b"\n"):  # RFC 9112: ignore empty lines before a request
            line = await _read_line(reader)
        if not line:
            return None
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequestError(400, "bad request line")
        method = parts[0]
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = await _read_line(reader)
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            if line in (b"\r\n", b"\n"):
                break
            key, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise _BadRequestError(400, "bad header line")
            headers[key.strip().lower()] = value.strip()
        else:
            raise _BadRequestError(400, "too many headers")
        if "transfer-encoding" in headers:
            raise _BadRequestError(501, "chunked request bodies are not supported")
        length_text = headers.get("content-length", "0")
        if not (length_text.isascii() and length_text.isdigit()) or int(length_text) > MAX_BODY:
            raise _BadRequestError(400, "bad content-length")
        if int(length_text):
            await reader.readexactly(int(length_text))
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        return method, "keep-alive" in tokens and "close" not in tokens

    async def handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        prefix = f"{self.name} {_peer_of(writer)} ".encode()
        self.tcp_connections += 1
        peer = writer.get_extra_info("peername")
        # `WHO` is answered with this connection's number and the peer's port: a test of a
        # failover tells the same connection (and 4-tuple) from a new one by them.
        who = f"conn={self.tcp_connections} port={peer[1] if peer else '?'}".encode()
        try:
            while True:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    line = await _read_line(reader)
                if not line:
                    return
                text = line.rstrip(b"\r\n")
                writer.write(prefix + (who if text == b"WHO" else text) + b"\n")
                await writer.drain()
        except (OSError, TimeoutError, _BadRequestError):
            return
        finally:
            writer.close()


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """One line with its end (or the unterminated rest at EOF); a line longer than MAX_LINE
    is a bad request."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except asyncio.LimitOverrunError:
        raise _BadRequestError(400, "line too long") from None


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.tcp_connections = 0  # accepted by the TCP echo so far
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport is not a registered DatagramTransport subclass
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            peer = plain_address(str(addr[0]))
            self.transport.sendto(f"{self.name} {peer} ".encode() + data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # e.g. ICMP unreachable for an earlier answer: nothing to do


def bound_socket(bind: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A socket bound to (bind, port); "::" is dual-stack (IPV6_V6ONLY off)."""
    family = socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _nodelay(handler: Handler) -> Handler:
    """Wrap a connection handler to set TCP_NODELAY first (no 40 ms Nagle stalls on
    keep-alive connections)."""

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await handler(reader, writer)

    return wrapped


def _bind_all(bind: str, http_port: int, tcp_port: int, udp_port: int) -> list[socket.socket]:
    wanted = [
        (http_port, socket.SOCK_STREAM),
        (tcp_port, socket.SOCK_STREAM),
        (udp_port, socket.SOCK_DGRAM),
    ]
    socks: list[socket.socket] = []
    try:
        for port, kind in wanted:
            socks.append(bound_socket(bind, port, kind))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


async def serve(name: str, bind: str, http_port: int, tcp_port: int, udp_port: int) -> None:
    """Serve until SIGTERM or SIGINT; print the ready line once all three listen."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    backend = Backend(name)
    try:
        socks = _bind_all(bind, http_port, tcp_port, udp_port)
    except OSError as exc:
        if bind != "::" or exc.errno != errno.EAFNOSUPPORT:
            raise
        socks = _bind_all("0.0.0.0", http_port, tcp_port, udp_port)  # IPv6 is off here
    http_sock, tcp_sock, udp_sock = socks
    http = await asyncio.start_server(
        _nodelay(backend.handle_http), sock=http_sock, limit=MAX_LINE, backlog=1024
    )
    tcp = await asyncio.start_server(
        _nodelay(backend.handle_tcp), sock=tcp_sock, limit=MAX_LINE, backlog=1024
    )
    udp, _ = await loop.create_datagram_endpoint(lambda: _UdpEcho(name), sock=udp_sock)
    ports = (
        http_sock.getsockname()[1],
        tcp_sock.getsockname()[1],
        udp_sock.getsockname()[1],
    )
    print(f"backend {name} ready: http {ports[0]}, tcp {ports[1]}, udp {ports[2]}", flush=True)
    try:
        await stop.wait()
    finally:
        http.close()
        tcp.close()
        udp.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.lab.backend", description=__doc__)
    parser.add_argument("--name", required=True, help="name put in every answer")
    parser.add_argument("--bind", default="::", help='address to bind ("::" is dual-stack)')
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--tcp-port", type=int, default=9000)
    parser.add_argument("--udp-port", type=int, default=9001)
    args = parser.parse_args(argv)
    try:
        ipaddress.ip_address(args.bind)
    except ValueError:
        parser.error(f"--bind must be an IP address, got {args.bind!r}")
    if not args.name or len(args.name.split()) != 1:
        parser.error(f"--name must be one word (answers are space-separated), got {args.name!r}")
    try:
        asyncio.run(serve(args.name, args.bind, args.http_port, args.tcp_port, args.udp_port))
    except OSError as exc:
        print(f"backend {args.name}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
