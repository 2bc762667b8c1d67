"""The lab backend as a real process on loopback: HTTP, TCP and UDP answers, bad input, SIGTERM.

`running_backend` is also used by the prober tests.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.lab.backend import plain_address

REPO = Path(__file__).resolve().parents[3]
READY = re.compile(r"^backend (\S+) ready: http (\d+), tcp (\d+), udp (\d+)$")


@dataclass
class RunningBackend:
    proc: subprocess.Popen[str]
    name: str
    host: str
    http: int
    tcp: int
    udp: int


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


@contextlib.contextmanager
def running_backend(name: str = "b1", bind: str = "127.0.0.1") -> Iterator[RunningBackend]:
    """A backend process on free ports (port 0: it reports the ports it bound); stopped, by
    its pid, at the end whatever happened (also if the test left it SIGSTOPped)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.lab.backend",
            f"--name={name}",
            f"--bind={bind}",
            "--http-port=0",
            "--tcp-port=0",
            "--udp-port=0",
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, 10.0).strip()
        match = READY.match(line)
        assert match, f"no ready line from the backend, got {line!r} (exit {proc.poll()})"
        yield RunningBackend(proc, name, bind, int(match[2]), int(match[3]), int(match[4]))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture(scope="module")
def backend() -> Iterator[RunningBackend]:
    with running_backend("b1") as running:
        yield running


def exchange(host: str, port: int, data: bytes, half_close: bool = True) -> bytes:
    """Send data on a new TCP connection and read until the server closes."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_http_get_names_backend_and_peer(backend: RunningBackend) -> None:
    raw = exchange("127.0.0.1", backend.http, b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n", False)
    status, headers, body, rest = read_answer(raw)
    assert rest == b""
    assert status == "HTTP/1.1 200 OK"
    assert headers["connection"] == "close"  # the server closed: exchange() returned
    assert json.loads(body) == {"backend": "b1", "peer": "127.0.0.1", "port": backend.http}


def read_answer(raw: bytes, head_only: bool = False) -> tuple[str, dict[str, str], bytes, bytes]:
    """(status line, headers, body, rest) of the first HTTP answer in raw."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    length = 0 if head_only else int(headers["content-length"])
    return status, headers, rest[:length], rest[length:]


def test_http_keep_alive_when_asked_serves_several_requests_in_order(
    backend: RunningBackend,
) -> None:
    pipelined = (
        b"GET /1 HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"
        b"HEAD /3 HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        b"GET /4 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /never HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"
    )
    raw = exchange("127.0.0.1", backend.http, pipelined, half_close=False)
    status, headers, body, raw = read_answer(raw)
    assert (status, headers["connection"]) == ("HTTP/1.1 200 OK", "keep-alive")
    assert json.loads(body)["backend"] == "b1"
    status, headers, body, raw = read_answer(raw)
    assert (status, headers["allow"]) == ("HTTP/1.1 405 Method Not Allowed", "GET, HEAD")
    status, headers, body, raw = read_answer(raw, head_only=True)
    assert (status, headers["connection"]) == ("HTTP/1.1 200 OK", "keep-alive")
    status, headers, body, raw = read_answer(raw)
    assert (status, headers["connection"]) == ("HTTP/1.1 200 OK", "close")
    assert json.loads(body)["backend"] == "b1"
    assert raw == b""  # closed after the request without keep-alive


def test_http_closes_unless_keep_alive_is_asked(backend: RunningBackend) -> None:
    for request in (b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"):
        raw = exchange("127.0.0.1", backend.http, request, half_close=False)
        assert read_answer(raw)[1]["connection"] == "close"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", "400"),
        (b"\xff\xfe\xfd\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "501"),
        (b"GET / HTTP/1.1\r\nHost: t\r\n", None),  # cut in the middle of the head
        (b"", None),
    ],
)
def test_bad_requests_are_answered_and_do_not_kill_it(
    backend: RunningBackend, request_bytes: bytes, status: str | None
) -> None:
    raw = exchange("127.0.0.1", backend.http, request_bytes)
    if status is None:
        assert raw == b""
    else:
        assert raw.split(b" ", 2)[1].decode() == status
    good = exchange("127.0.0.1", backend.http, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert b"200 OK" in good
    assert backend.proc.poll() is None


def test_reset_mid_request_does_not_kill_it(backend: RunningBackend) -> None:
    with socket.create_connection(("127.0.0.1", backend.http)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert b"200 OK" in exchange("127.0.0.1", backend.http, b"GET / HTTP/1.0\r\n\r\n")


def test_tcp_echo_answers_each_line(backend: RunningBackend) -> None:
    raw = exchange("127.0.0.1", backend.tcp, b"hello\nsecond line\r\nno end")
    assert raw == b"b1 127.0.0.1 hello\nb1 127.0.0.1 second line\nb1 127.0.0.1 no end\n"


def test_tcp_echo_sets_nodelay_and_answers_line_by_line(backend: RunningBackend) -> None:
    with socket.create_connection(("127.0.0.1", backend.tcp), timeout=5) as sock:
        for word in (b"one", b"two"):
            sock.sendall(word + b"\n")
            assert sock.recv(100) == b"b1 127.0.0.1 " + word + b"\n"


def test_tcp_echo_tells_one_connection_from_another_by_who(backend: RunningBackend) -> None:
    with socket.create_connection(("127.0.0.1", backend.tcp), timeout=5) as first:
        first.sendall(b"WHO\n")
        one = first.recv(100)
        first.sendall(b"WHO\n")
        assert first.recv(100) == one  # the same connection: the same answer
        with socket.create_connection(("127.0.0.1", backend.tcp), timeout=5) as second:
            second.sendall(b"WHO\n")
            two = second.recv(100)
            port = second.getsockname()[1]
    serial = int(one.split(b"conn=")[1].split()[0])
    assert two == f"b1 127.0.0.1 conn={serial + 1} port={port}\n".encode()


def test_udp_echo(backend: RunningBackend) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"probe 1", ("127.0.0.1", backend.udp))
        data, source = sock.recvfrom(1000)
    assert data == b"b1 127.0.0.1 probe 1"
    assert source == ("127.0.0.1", backend.udp)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 on loopback")
def test_dual_stack_reports_ipv4_clients_as_ipv4() -> None:
    with running_backend("b6", bind="::") as b6:
        raw = exchange("127.0.0.1", b6.http, b"GET / HTTP/1.0\r\n\r\n")
        assert json.loads(read_answer(raw)[2])["peer"] == "127.0.0.1"
        raw = exchange("::1", b6.http, b"GET / HTTP/1.0\r\n\r\n")
        assert json.loads(read_answer(raw)[2])["peer"] == "::1"
        assert exchange("127.0.0.1", b6.tcp, b"x\n") == b"b6 127.0.0.1 x\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(b"d", ("127.0.0.1", b6.udp))
            assert sock.recv(100) == b"b6 127.0.0.1 d"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_it_promptly_with_a_connection_open(signum: int) -> None:
    with running_backend("bt") as bt, socket.create_connection(("127.0.0.1", bt.http)) as idle:
        idle.sendall(
            b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"
        )  # keep-alive: the server waits for more
        assert b"200 OK" in idle.recv(1000)
        started = time.monotonic()
        bt.proc.send_signal(signum)
        assert bt.proc.wait(5) == 0
        assert time.monotonic() - started < 1.0


def test_bind_conflict_exits_with_a_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "appliance.lab.backend",
                "--name=bx",
                "--bind=127.0.0.1",
                f"--http-port={port}",
                "--tcp-port=0",
                "--udp-port=0",
            ],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
    assert done.returncode == 1
    assert "backend bx:" in done.stderr


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        ("::ffff:192.0.2.11", "192.0.2.11"),
        ("192.0.2.11", "192.0.2.11"),
        ("2001:db8::11", "2001:db8::11"),
        ("2001:DB8:0::11", "2001:db8::11"),
        ("::1", "::1"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_plain_address(seen: str, expected: str) -> None:
    assert plain_address(seen) == expected
