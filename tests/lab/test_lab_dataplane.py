"""Traffic through a VIP in the lab: real agents, real nftables on the owner, real backends."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest
import yaml

from appliance.lab import topology
from appliance.lab.netlab import NetLab
from appliance.lab.outage import Sample, backends_seen, outages, summary_line
from appliance.lab.prober import read_samples
from appliance.lab.topology import API_PORT, RAFT_PORT
from tests.lab.labkit import MakeLab, wait_for
from tests.lab.test_lab_ownership import metrics_text, wait_owner

pytestmark = pytest.mark.timeout(180)


def web_service(lab: NetLab, family: str = "ipv4", extra_ports: int = 0) -> str:
    """A pool and an HTTP service over every backend; its VIP."""
    leader = lab.wait_leader()
    pool = {"addresses": [topology.L2_VIPS4, topology.L2_VIPS6], "default": True}
    assert lab.api(leader, "PUT", "/v1/pools/lan", pool) is not None
    attr = "ipv4" if family == "ipv4" else "ipv6"
    backends = [
        {"address": str(getattr(h, attr)), "port": topology.BACKEND_HTTP_PORT}
        for h in lab.plan.of_kind("backend")
    ]
    ports = [{"port": 80, "backends": backends}]
    ports += [{"port": 81 + i, "backends": []} for i in range(extra_ports)]
    body = {"ip_family": family, "ports": ports}
    answer = lab.api(leader, "PUT", "/v1/services/t/default/web", body)
    assert answer is not None
    return str(answer["address"])


def probe(lab: NetLab, vip: str, seconds: float, name: str) -> list[Sample]:
    out = lab.dir / f"{name}.jsonl"
    argv = [sys.executable, "-m", "appliance.lab.prober", "--target", vip, "--port", "80"]
    result = lab.exec(
        "client", [*argv, "--duration", str(seconds), "--out", str(out)], capture_output=True
    )
    assert result.returncode == 0, result
    return read_samples(out)


def connect(address: str, port: int) -> tuple[str, float]:
    """A TCP connect from the calling thread's namespace: outcome and seconds it took."""
    started = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=5.0):
            return "connected", time.monotonic() - started
    except ConnectionRefusedError:
        return "refused", time.monotonic() - started
    except OSError as exc:
        return type(exc).__name__, time.monotonic() - started


def ruleset(lab: NetLab, node: str) -> str:
    return str(lab.exec(node, ["nft", "list", "ruleset"], capture_output=True, text=True).stdout)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_vip_traffic_reaches_every_backend_and_follows_the_owner(
    make_lab: MakeLab, family: str
) -> None:
    lab = make_lab()
    vip = web_service(lab, family)
    nodes = lab.node_names()
    owner = wait_owner(lab, vip, nodes)
    samples = probe(lab, vip, 2.0, "before")
    assert not outages(samples), samples[:5]
    seen = backends_seen(samples)
    assert set(seen) == {h.name for h in lab.plan.of_kind("backend")}, seen
    assert min(seen.values()) > len(samples) / 5, seen  # spread, not pinned
    assert vip in ruleset(lab, owner)
    for node in nodes:
        if node != owner:
            assert vip not in ruleset(lab, node), f"{node} has rules for a VIP it does not hold"

    lab.crash(owner, "kill")
    survivors = [n for n in nodes if n != owner]
    new = wait_owner(lab, vip, survivors, not_on=(owner,))
    after = probe(lab, vip, 1.0, "after")
    assert not outages(after)
    assert set(backends_seen(after)) == set(seen)
    assert vip in ruleset(lab, new)
    assert all(vip not in ruleset(lab, n) for n in survivors if n != new)


def test_a_port_without_backends_refuses_at_once(make_lab: MakeLab) -> None:
    lab = make_lab()
    vip = web_service(lab, extra_ports=1)
    wait_owner(lab, vip, lab.node_names())
    probe(lab, vip, 0.5, "warm")  # the VIP answers on its served port

    thread = lab.in_ns("client")
    try:
        outcome, took = thread.run(connect, vip, 81)
    finally:
        thread.close()
    assert outcome == "refused", outcome
    assert took < 1.0, f"refusal took {took:.2f}s"


def backend_state(lab: NetLab, node: str, name: str) -> bool | None:
    """Whether `node` sees backend `name` as healthy (None: not checked yet / no answer)."""
    address = str(lab.plan.host(name).ipv4)
    found = lab.api(node, "GET", "/v1/services/t/default/web") or {}
    for track in found.get("health", {}).get("backends", []):
        if track["address"] == address and track["checks"]:
            return bool(track["healthy"])
    return None


def test_a_dead_backend_leaves_at_once_and_returns_when_back(make_lab: MakeLab) -> None:
    lab = make_lab()
    vip = web_service(lab)
    owner = wait_owner(lab, vip, lab.node_names())
    b1, b2 = (h.name for h in lab.plan.of_kind("backend"))
    assert not outages(probe(lab, vip, 0.5, "warm"))

    pid = lab.pid(f"backend-{b1}")
    assert pid is not None
    killed = time.monotonic()
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: backend_state(lab, owner, b1) is False or None, 10.0, f"{b1} seen down")
    print(f"{b1} killed: out of the ruleset {time.monotonic() - killed:.2f}s later")
    samples = probe(lab, vip, 1.5, "one-down")
    assert not outages(samples), summary_line(samples)
    assert set(backends_seen(samples)) == {b2}
    shown = lab.exec(
        "client",
        ["raftlb", "--api", lab.api_url(owner), "services", "get", "t/default/web"],
        capture_output=True,
        text=True,
    )
    assert "DOWN" in shown.stdout and f"health as seen by {owner}" in shown.stdout, shown.stdout

    lab.start_backend(b1)
    wait_for(lambda: backend_state(lab, owner, b1) or None, 10.0, f"{b1} seen up again")
    assert set(backends_seen(probe(lab, vip, 1.5, "back"))) == {b1, b2}

    for name in (b1, b2):
        pid = lab.pid(f"backend-{name}")
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
    wait_for(
        lambda: all(backend_state(lab, owner, n) is False for n in (b1, b2)) or None,
        10.0,
        "both backends seen down",
    )
    thread = lab.in_ns("client")
    try:
        outcome, took = thread.run(connect, vip, 80)
    finally:
        thread.close()
    assert (outcome, took < 1.0) == ("refused", True), (outcome, took)
    entry = next(v for v in lab.api(owner, "GET", "/v1/vips") if v["address"] == vip)
    assert entry["backends"] == {"healthy": 0, "total": 2}
    assert f'raftlb_vip_healthy_backends{{vip="{vip}"}} 0.0' in metrics_text(lab, owner)


def test_raft_and_api_ports_refuse_clients_that_are_not_allowed(make_lab: MakeLab) -> None:
    lab = make_lab()
    lab.wait_leader()
    locked, other = "n1", "n2"
    path = lab.config_path(locked)
    data = yaml.safe_load(path.read_text())
    data["api"]["allow"] = [str(topology.CLIENT4)]  # the client sits on the LAN, not there
    path.write_text(yaml.safe_dump(data))
    lab.crash(locked, "kill")
    lab.start_agent(locked)
    host = str(lab.plan.host(locked).ipv4)

    def from_ns(ns: str, address: str, port: int) -> str:
        thread = lab.in_ns(ns)
        try:
            return thread.run(connect, address, port)[0]
        finally:
            thread.close()

    # Up again (a refusal before that would only mean nothing listens yet), then filtered.
    wait_for(lambda: lab.api(locked, "GET", "/v1/status", via=other), 20.0, f"{locked} up")
    wait_for(lambda: from_ns("client", host, API_PORT) == "refused" or None, 20.0, "API refused")
    assert from_ns("client", host, RAFT_PORT) == "refused"
    assert from_ns(other, host, API_PORT) == "connected"  # a peer may
    assert from_ns(other, host, RAFT_PORT) == "connected"
    # Without api.allow the API stays open to clients, Raft does not.
    other_host = str(lab.plan.host(other).ipv4)
    assert from_ns("client", other_host, API_PORT) == "connected"
    assert from_ns("client", other_host, RAFT_PORT) == "refused"


def probe_proto(
    lab: NetLab, vip: str, port: int, proto: str, seconds: float, name: str
) -> list[Sample]:
    out = lab.dir / f"{name}.jsonl"
    argv = [sys.executable, "-m", "appliance.lab.prober", "--target", vip, "--port", str(port)]
    argv += ["--proto", proto, "--duration", str(seconds), "--out", str(out)]
    result = lab.exec("client", argv, capture_output=True)
    assert result.returncode == 0, result
    return read_samples(out)


def test_weights_udp_affinity_and_two_services_sharing_a_vip(make_lab: MakeLab) -> None:
    lab = make_lab()
    leader = lab.wait_leader()
    pool = {"addresses": [topology.L2_VIPS4, topology.L2_VIPS6], "default": True}
    assert lab.api(leader, "PUT", "/v1/pools/lan", pool) is not None
    b1, b2 = lab.plan.of_kind("backend")
    http = {
        "sharing_key": "shared",
        "ports": [
            {
                "port": 80,
                "backends": [
                    {"address": str(b1.ipv4), "port": topology.BACKEND_HTTP_PORT, "weight": 3},
                    {"address": str(b2.ipv4), "port": topology.BACKEND_HTTP_PORT, "weight": 1},
                ],
            }
        ],
    }
    udp = {
        "sharing_key": "shared",
        "affinity": "source",
        "ports": [
            {
                "port": 53,
                "protocol": "udp",
                "backends": [
                    {"address": str(h.ipv4), "port": topology.BACKEND_UDP_PORT} for h in (b1, b2)
                ],
            }
        ],
    }
    web = lab.api(leader, "PUT", "/v1/services/t/default/web", http)
    dns = lab.api(leader, "PUT", "/v1/services/t/default/dns", udp)
    assert web is not None and dns is not None
    vip = str(web["address"])
    assert str(dns["address"]) == vip  # one VIP, two services on different ports
    wait_owner(lab, vip, lab.node_names())

    weighted = backends_seen(probe(lab, vip, 3.0, "weights"))
    ratio = weighted.get(b1.name, 0) / max(1, weighted.get(b2.name, 0))
    print(f"weights 3:1 -> answers {weighted}, ratio {ratio:.2f}")
    assert 1.8 < ratio < 5.5, weighted  # 3:1 within binomial noise (300 requests)

    datagrams = probe_proto(lab, vip, 53, "udp", 2.0, "udp")
    assert not outages(datagrams), summary_line(datagrams)
    # Source affinity: the client's datagrams all go to one backend (its hash pick).
    assert len(backends_seen(datagrams)) == 1, backends_seen(datagrams)
