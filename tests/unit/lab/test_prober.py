"""The prober against a real backend process and controlled outages, all on 127.0.0.1.

Timing checks are tolerant on purpose (a loaded CI machine): they prove the prober measures the
right thing, not how fast this machine is. The resolution figures are measured separately.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.lab.outage import Sample, mac_changes, outages, send_gaps
from appliance.lab.prober import (
    NeighbourReader,
    ProbeConfig,
    ProbeError,
    Prober,
    error_name,
    parse_echo_answer,
    parse_http_answer,
    read_samples,
)
from tests.unit.lab.test_backend import REPO, RunningBackend, running_backend

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


@pytest.fixture(scope="module")
def backend() -> Iterator[RunningBackend]:
    with running_backend("b1") as running:
        yield running


def config(port: int, proto: str = "http", **kw: object) -> ProbeConfig:
    settings: dict[str, object] = {"interval": 0.01, "timeout": 0.2, "neighbour": False}
    settings.update(kw)
    return ProbeConfig("127.0.0.1", port, proto, **settings)  # type: ignore[arg-type]


def assert_all_ok(samples: list[Sample], name: str = "b1") -> None:
    failed = [s for s in samples if not s.ok]
    assert not failed, failed[:5]
    assert {s.backend for s in samples} == {name}
    assert {s.peer for s in samples} == {"127.0.0.1"}
    assert all(s.latency is not None and 0 < s.latency < 0.2 for s in samples)


async def test_http_one_second(backend: RunningBackend) -> None:
    # neighbour reading on: 127.0.0.1 has no neighbour entry, so the MAC is None
    samples = await Prober(config(backend.http, duration=1.0, neighbour=True)).run()
    assert 80 <= len(samples) <= 100
    assert_all_ok(samples)
    assert {s.mac for s in samples} == {None}
    gaps = send_gaps(samples)
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.01, abs=0.003)  # the median gap


@pytest.mark.parametrize("proto", ["tcp", "udp"])
async def test_tcp_and_udp(backend: RunningBackend, proto: str) -> None:
    port = backend.tcp if proto == "tcp" else backend.udp
    samples = await Prober(config(port, proto, duration=0.5)).run()
    assert 40 <= len(samples) <= 50
    assert_all_ok(samples)


async def test_sigstop_window_is_measured(backend: RunningBackend) -> None:
    """A frozen backend: the kernel still accepts connections, so a request fails only if the
    freeze outlasts its timeout; the measured outage is the freeze minus the timeout."""
    freeze, timeout = 0.4, 0.05
    prober = Prober(config(backend.http, timeout=timeout))
    run = asyncio.create_task(prober.run())
    await asyncio.sleep(0.3)
    os.kill(backend.proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        await asyncio.sleep(freeze)
    finally:
        os.kill(backend.proc.pid, signal.SIGCONT)
    resumed = time.monotonic()
    await asyncio.sleep(0.3)
    prober.stop()
    samples = await run
    (outage,) = outages(samples)
    assert outage.start == pytest.approx(stopped, abs=0.03)
    assert outage.duration == pytest.approx(resumed - stopped - timeout, abs=0.06)
    assert not outage.open


class Switchable:
    """A TCP echo server in this process that can refuse service for a window: while `down`,
    each new connection is reset at once (as a closed port would be), so the window is known to
    the microsecond on the same clock as the prober's samples."""

    def __init__(self) -> None:
        self.down = False
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
            writer.close()
            return
        line = await reader.readline()
        writer.write(b"sw 127.0.0.1 " + line)
        await writer.drain()
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.mark.parametrize("window", [0.3, 0.1])
async def test_controlled_outage_is_measured_within_an_interval(window: float) -> None:
    switchable = Switchable()
    port = await switchable.start()
    interval = 0.01
    prober = Prober(config(port, "tcp", interval=interval))
    run = asyncio.create_task(prober.run())
    try:
        await asyncio.sleep(0.2)
        switchable.down, went_down = True, time.monotonic()
        await asyncio.sleep(window)
        switchable.down, came_back = False, time.monotonic()
        await asyncio.sleep(0.2)
    finally:
        prober.stop()
        samples = await run
        switchable.close()
    (outage,) = outages(samples)
    real = came_back - went_down
    # each edge is seen by the first request sent after it: up to one interval late
    tolerance = interval + 0.015
    assert outage.start - went_down == pytest.approx(interval / 2, abs=tolerance)
    assert outage.end - came_back == pytest.approx(interval / 2, abs=tolerance)
    assert outage.duration == pytest.approx(real, abs=tolerance)
    assert {s.error for s in samples if not s.ok} <= {"reset", "closed without answer"}


async def test_hanging_requests_do_not_delay_the_schedule() -> None:
    # a listener that never accepts: connections complete in the kernel, answers never come
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1024)
        port = silent.getsockname()[1]
        started = time.monotonic()
        samples = await Prober(config(port, "tcp", timeout=0.3, duration=0.5)).run()
        elapsed = time.monotonic() - started
    assert 40 <= len(samples) <= 50
    assert {s.error for s in samples} == {"timeout"}
    assert max(send_gaps(samples)) < 0.03
    assert elapsed < 0.5 + 0.3 + 0.2  # the last requests time out, then it returns
    (outage,) = outages(samples)
    assert outage.open


async def test_refused_fails_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        samples = await Prober(config(port, "http", duration=0.2)).run()
    assert samples
    assert {s.error for s in samples} == {"refused"}


async def test_udp_without_listener_fails() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    samples = await Prober(config(port, "udp", duration=0.2)).run()
    assert samples
    assert {s.error for s in samples} <= {"refused", "timeout"}


async def test_neighbour_macs_are_recorded(backend: RunningBackend) -> None:
    macs = iter([MAC_A] * 30 + [None] * 5 + [MAC_B] * 1000)

    async def read() -> str | None:
        return next(macs)

    samples = await Prober(config(backend.udp, "udp", duration=0.6), neighbour=read).run()
    assert_all_ok(samples)
    assert [(c.old, c.new) for c in mac_changes(samples)] == [(MAC_A, MAC_B)]
    assert samples[0].mac == MAC_A


@pytest.mark.parametrize("trouble", ["raises", "hangs"])
async def test_neighbour_trouble_never_stops_the_prober(
    backend: RunningBackend, trouble: str
) -> None:
    async def read() -> str | None:
        if trouble == "hangs":
            await asyncio.sleep(3600)
        raise OSError(105, "No buffer space available")

    prober = Prober(config(backend.udp, "udp", duration=0.6), neighbour=read)
    samples = await prober.run()
    assert 50 <= len(samples) <= 60
    assert_all_ok(samples)
    assert {s.mac for s in samples} == {None}
    assert prober.watch is not None and prober.watch.errors >= 1


async def test_neighbour_reader_without_entry_reads_none() -> None:
    reader = NeighbourReader("127.0.0.1")
    try:
        assert await reader.read() is None
        assert await reader.read() is None  # the netlink socket is reused
    finally:
        reader.close()


async def test_stop_before_run_returns_at_once() -> None:
    prober = Prober(config(9, "udp"))
    prober.stop()
    assert await prober.run() == []


async def test_record_failure_stops_the_run(backend: RunningBackend) -> None:
    def record(sample: Sample) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        await asyncio.wait_for(Prober(config(backend.udp, "udp"), record=record).run(), 5)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"target": "vip.example"}, "target"),
        ({"port": 0}, "port"),
        ({"proto": "icmp"}, "proto"),
        ({"interval": 0}, "interval"),
        ({"timeout": -1}, "timeout"),
        ({"duration": 0}, "duration"),
    ],
)
def test_config_is_checked(kw: dict[str, object], field: str) -> None:
    settings: dict[str, object] = {"target": "127.0.0.1", "port": 80}
    settings.update(kw)
    with pytest.raises(ValueError, match=field):
        ProbeConfig(**settings)  # type: ignore[arg-type]


def test_config_canonical_target() -> None:
    assert ProbeConfig("2001:DB8:0::0200", 80).target == "2001:db8::200"


def test_answer_parsing() -> None:
    body = json.dumps({"backend": "b2", "peer": "192.0.2.12", "port": 80}).encode()
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n" + body
    assert parse_http_answer(ok) == ("b2", "192.0.2.12")
    assert parse_http_answer(b"HTTP/1.1 200 OK\r\n\r\n<html>nginx</html>") == (None, None)
    with pytest.raises(ProbeError, match="http 503"):
        parse_http_answer(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
    with pytest.raises(ProbeError, match="bad http answer"):
        parse_http_answer(b"SSH-2.0-OpenSSH\r\n")
    assert parse_echo_answer(b"b1 192.0.2.11 probe 7\n", b"probe 7") == ("b1", "192.0.2.11")
    with pytest.raises(ProbeError):
        parse_echo_answer(b"b1 192.0.2.11 probe 6\n", b"probe 7")  # a late answer to another


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (TimeoutError(), "timeout"),
        (ConnectionRefusedError(111, "refused"), "refused"),
        (ConnectionResetError(104, "reset"), "reset"),
        (OSError(113, "No route to host"), "EHOSTUNREACH"),
        (ProbeError("http 502"), "http 502"),
        (ValueError("x"), "ValueError"),
    ],
)
def test_error_names(exc: BaseException, name: str) -> None:
    assert error_name(exc) == name


def prober_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "appliance.lab.prober", "--target=127.0.0.1", *args]


def test_cli_writes_samples_and_a_summary(backend: RunningBackend, tmp_path: Path) -> None:
    out = tmp_path / "samples.jsonl"
    done = subprocess.run(
        prober_cli(f"--port={backend.tcp}", "--proto=tcp", "--duration=0.5", f"--out={out}"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    samples = read_samples(out)
    assert 40 <= len(samples) <= 50
    assert_all_ok(samples)
    assert done.stdout.startswith(f"prober tcp 127.0.0.1:{backend.tcp}: {len(samples)} samples;")
    assert "0 failed; 0 outages" in done.stdout
    assert done.stdout.count("\n") == 1


def test_cli_sigterm_leaves_its_samples(backend: RunningBackend, tmp_path: Path) -> None:
    out = tmp_path / "samples.jsonl"
    proc = subprocess.Popen(
        prober_cli(f"--port={backend.http}", f"--out={out}", "--no-neighbour"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 2000):
            time.sleep(0.05)  # wait until it runs: ~20 samples written
        proc.terminate()
        stdout, _ = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    samples = read_samples(out)
    assert len(samples) >= 15
    assert_all_ok(samples)
    assert f"{len(samples)} samples; 0 failed" in stdout


def test_cli_rejects_bad_arguments() -> None:
    done = subprocess.run(
        prober_cli("--port=80", "--interval=0"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "interval must be positive" in done.stderr
