"""Connection exhaustion against a real agent's API: 2,000 idle connections and slowloris
clients, while a legitimate client keeps asking. Every one of its requests is answered, the
agent's memory stays bounded, the crowd is closed, and the cluster neither elects nor fails."""

from __future__ import annotations

import resource
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from integration_harness import LabCluster

pytestmark = pytest.mark.integration

CROWD = 2000


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_idle_crowds_and_slowloris_never_lock_a_client_out(cluster: LabCluster) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < CROWD + 200:
        pytest.skip(f"the open-file limit ({hard}) is too low for {CROWD} connections here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 16), hard))
    target = cluster.followers(cluster.wait_ready(cluster.ids))[0]
    node = cluster.lab.nodes[target]
    assert node.pid is not None
    url = urlsplit(node.api_url)
    address = (url.hostname or "127.0.0.1", url.port or 80)
    term = cluster.status(target)["raft"]["term"]  # type: ignore[index]
    stalls = cluster.slow_syncs()
    rss_before = rss_mib(node.pid)

    answered: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def legitimate() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                # A SYN lost while 2,000 others fill the accept queue is sent again after 1,
                # 3 and 7 s: a client that waits for those is not locked out (seen once, on
                # a loaded machine, with the harness's usual 1 s connect timeout).
                response = cluster.request("GET", target, "/v1/status", timeout=5.0, connect=8.0)
                if response.status_code == 200:
                    answered.append(time.monotonic() - started)
                else:
                    failures.append(f"HTTP {response.status_code}")
            except requests.RequestException as exc:
                failures.append(type(exc).__name__)
            time.sleep(0.1)

    client = threading.Thread(target=legitimate, daemon=True)
    crowd: list[socket.socket] = []
    try:
        client.start()
        for i in range(CROWD):
            sock = socket.create_connection(address, timeout=5)
            if i % 100 == 0:  # some slowloris among them
                sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
            crowd.append(sock)
        rss_crowd = rss_mib(node.pid)
        time.sleep(13)  # past the idle time: the crowd is closed by the agent
        stop.set()
        client.join(10)
    finally:
        for sock in crowd:
            sock.close()
    rss_after = rss_mib(node.pid)
    print(
        f"\nAPI crowd of {CROWD} on {target}: {len(answered)} answered, failures {failures[:5]}, "
        f"slowest {max(answered, default=0):.3f} s; RSS {rss_before:.1f} -> {rss_crowd:.1f} "
        f"(crowd) -> {rss_after:.1f} MiB"
    )
    assert not failures, failures
    assert len(answered) >= 50
    assert rss_crowd - rss_before < 20 and rss_after - rss_before < 20
    if cluster.status(target)["raft"]["term"] != term:  # type: ignore[index]
        # Only a stalled disk may excuse an election; the crowd never may.
        assert cluster.slow_syncs() > stalls, "an election during the crowd, with no disk stall"
    log = Path(node.log_path).read_text()
    assert log.count("API: closed connections") <= 4, "refusals are logged once per interval"
