"""Size in the lab: thousands of services written while the lease machinery runs move no VIP
(a count of takeovers, not a time), and changing one service's rules disturbs no other VIP."""

from __future__ import annotations

import socket
import time

import pytest

from appliance.lab import topology
from appliance.lab.bench import run_prober
from appliance.lab.netlab import NetLab
from appliance.lab.outage import outages
from appliance.lab.prober import read_samples
from appliance.lab.scale import POOL, LabClient, scrape, takeovers, value, wait_services, write_bulk
from appliance.lab.settle import settle
from tests.lab.labkit import MakeLab, wait_for
from tests.lab.test_lab_ownership import wait_owner

pytestmark = pytest.mark.timeout(600)


def terms(client: LabClient, nodes: list[str]) -> dict[str, int]:
    return {n: int(client.ok(n, "GET", "/v1/status").body["raft"]["term"]) for n in nodes}


def test_2000_services_written_move_no_vip_and_elect_no_leader(make_lab: MakeLab) -> None:
    lab = make_lab()
    nodes = lab.node_names()
    client = LabClient(lab)
    try:
        # Every node past its warmup first: with `vips_on_leader: avoid`, VIPs written while the
        # followers still warm up go to the leader (the last resort) and move on once they are
        # warm, which is a start-up handover, not what this test measures.
        leader = settle(lab, []).leader
        client.ok(leader, "PUT", "/v1/pools/scale", POOL)
        before, elected = takeovers(client, nodes), terms(client, nodes)
        write_bulk(client, nodes[0], 0, 2000, batch=100, backends=10)
        wait_services(client, nodes, 2000, timeout=120)

        def owned() -> int | None:
            vips = client.ok(nodes[1], "GET", "/v1/vips").body
            return len(vips) if all(v["node"] for v in vips) else None

        assert wait_for(owned, 60, "every VIP owned") == 2000
        after = takeovers(client, nodes)
        moved = {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0)}
        # Each VIP taken once, by its first owner: no failover, no rebalance, no lapsed lease
        # taken again (that would count twice).
        assert moved == {"new": 2000}
        assert terms(client, nodes) == elected
    finally:
        client.close()


def _echo(sock: socket.socket, text: bytes) -> bytes:
    sock.sendall(text + b"\n")
    return sock.recv(200)


def test_changing_one_service_disturbs_no_other_vip(make_lab: MakeLab) -> None:
    """Two services on one node: 40 changes of B's rules (backends, ports, removal and
    return) while a TCP connection to A stays open and a prober opens a new one to A every
    10 ms. A's connection keeps its backend, no probe fails, and B's changes were deltas."""
    lab: NetLab = make_lab()
    nodes = lab.node_names()
    client = LabClient(lab)
    holder = lab.in_ns("client")
    try:
        leader = lab.wait_leader()
        pool = {"addresses": [topology.L2_VIPS4], "default": True}
        client.ok(leader, "PUT", "/v1/pools/lan", pool)
        backends = [str(h.ipv4) for h in lab.plan.of_kind("backend")]
        ports_a = [
            {"port": 80, "backends": [{"address": b, "port": 80} for b in backends]},
            {"port": 9000, "backends": [{"address": b, "port": 9000} for b in backends]},
        ]
        body_a = {"ports": ports_a, "nodes": [nodes[0]]}
        vip_a = client.ok(leader, "PUT", "/v1/services/t/a/web", body_a).body["address"]
        owner = wait_owner(lab, vip_a, nodes)
        sock = holder.run(socket.create_connection, (vip_a, 9000), 5.0)
        first = _echo(sock, b"hello")
        name = "raftlb_ruleset_update_seconds"
        deltas = value(scrape(client, owner), name, f"{name}_count")
        loads = client.ok(owner, "GET", "/v1/status").body["dataplane"]["loads"]

        def change_b() -> None:
            time.sleep(0.5)
            for i in range(40):
                if i % 10 == 9:
                    client.ok(leader, "DELETE", "/v1/services/t/b/other")
                    continue
                port = {
                    "port": 8000 + i % 3,
                    "backends": [{"address": backends[i % 2], "port": 80}],
                }
                body_b = {"ports": [port, {"port": 7000, "protocol": "udp"}], "nodes": [nodes[0]]}
                client.ok(leader, "PUT", "/v1/services/t/b/other", body_b)
                answer = _echo(sock, f"ping {i}".encode())
                assert answer.split()[0] == first.split()[0], (answer, first)  # same backend

        samples = read_samples(run_prober(lab, "probe-a", vip_a, "http", 6.0, during=change_b))
        assert samples and not outages(samples), [s for s in samples if not s.ok][:5]
        after = value(scrape(client, owner), name, f"{name}_count")
        assert after - deltas >= 30  # B's changes reached the kernel, one transaction each
        assert client.ok(owner, "GET", "/v1/status").body["dataplane"]["loads"] == loads
        sock.close()
    finally:
        holder.close()
        client.close()
