"""The lab's network: who reaches whom (IPv4 and IPv6, with and without the router), and the
prober inside the client recording the answering backend and its MAC."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from appliance.lab.netlab import NetLab
from appliance.lab.outage import by_time
from appliance.lab.prober import read_samples
from appliance.lab.topology import BACKEND_HTTP_PORT, BACKEND_TCP_PORT, BACKEND_UDP_PORT
from tests.lab.labkit import MakeLab, ping

pytestmark = pytest.mark.timeout(120)
FAMILIES = [4, 6]


def address(lab: NetLab, host: str, family: int) -> str:
    h = lab.plan.host(host)
    return str(h.ipv4 if family == 4 else h.ipv6)


def unreachable(lab: NetLab, pairs: list[tuple[str, str]], family: int) -> list[str]:
    """The (from, to) pairs whose single ping fails, with ping's words."""
    failed = []
    for source, target in pairs:
        result = ping(lab, source, address(lab, target, family))
        if result.returncode != 0:
            failed.append(f"{source} -> {target} ({address(lab, target, family)}): {result.stdout}")
    return failed


@pytest.mark.parametrize("family", FAMILIES)
def test_every_node_pings_every_other_node(lab: NetLab, family: int) -> None:
    nodes = lab.node_names()
    pairs = [(a, b) for a in nodes for b in nodes if a != b]
    assert len(pairs) == 6
    assert unreachable(lab, pairs, family) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_the_client_pings_each_backend(lab: NetLab, family: int) -> None:
    pairs = [("client", h.name) for h in lab.plan.of_kind("backend")]
    assert unreachable(lab, pairs, family) == []


@pytest.mark.needs_bird
def test_behind_the_router_the_client_reaches_backends_and_nodes(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, backends=2, router=True)
    assert lab.alive("bird")
    route = lab.exec("client", ["ip", "route", "show", "default"], capture_output=True, text=True)
    assert "via 203.0.113.1" in route.stdout, route.stdout
    targets = [h.name for h in lab.plan.of_kind("backend") + lab.plan.of_kind("node")]
    for family in FAMILIES:
        assert unreachable(lab, [("client", t) for t in targets], family) == [], family
    # Routed, not bridged: the client is not on the LAN.
    assert lab.plan.host("client").ipv4.compressed.startswith("203.0.113.")


@pytest.mark.parametrize(
    ("family", "proto", "port"),
    [
        (4, "http", BACKEND_HTTP_PORT),
        (6, "http", BACKEND_HTTP_PORT),
        (4, "tcp", BACKEND_TCP_PORT),
        (6, "udp", BACKEND_UDP_PORT),
    ],
)
def test_the_prober_in_the_client_records_the_backend_and_its_mac(
    lab: NetLab, tmp_path: Path, family: int, proto: str, port: int
) -> None:
    backend = lab.plan.host("b2")
    target = address(lab, "b2", family)
    # Start without a neighbour entry: the MAC in the samples is what the prober read.
    assert lab.exec("client", ["ip", "neigh", "flush", "to", target]).returncode == 0
    out = tmp_path / "probe.jsonl"
    argv = [sys.executable, "-m", "appliance.lab.prober", "--target", target, "--port", str(port)]
    argv += ["--proto", proto, "--duration", "1", "--out", str(out)]
    result = lab.exec("client", argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    samples = by_time(read_samples(out))
    assert len(samples) >= 20, f"{len(samples)} samples in 1 s at 10 ms"
    failed = [s for s in samples if not s.ok]
    assert failed == [], failed[:3]
    assert {s.backend for s in samples} == {"b2"}
    assert {s.peer for s in samples} == {address(lab, "client", family)}
    # The first samples may precede the first neighbour read; the latest carry the MAC.
    macs = [s.mac for s in samples]
    assert set(macs) - {None} == {backend.interfaces[0].mac}, set(macs)
    assert set(macs[-10:]) == {backend.interfaces[0].mac}, macs
