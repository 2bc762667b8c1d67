"""Traffic through a VIP in the lab: real agents, real nftables on the owner, real backends."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from appliance.lab import topology
from appliance.lab.netlab import NetLab
from appliance.lab.outage import Sample, backends_seen, outages
from appliance.lab.prober import read_samples
from tests.lab.labkit import MakeLab
from tests.lab.test_lab_ownership import wait_owner

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

    def connect() -> tuple[str, float]:
        started = time.monotonic()
        try:
            with socket.create_connection((vip, 81), timeout=5.0):
                return "connected", time.monotonic() - started
        except ConnectionRefusedError:
            return "refused", time.monotonic() - started
        except OSError as exc:
            return type(exc).__name__, time.monotonic() - started

    thread = lab.in_ns("client")
    try:
        outcome, took = thread.run(connect)
    finally:
        thread.close()
    assert outcome == "refused", outcome
    assert took < 1.0, f"refusal took {took:.2f}s"
