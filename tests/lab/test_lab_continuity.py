"""Connections through a failover (issue 19): with consistent hashing and the VIP as the source
address, a TCP connection opened before the owner is killed (-9) or drained keeps exchanging
data afterwards with the same backend over the same connection, and a UDP flow keeps its
backend. No connection state passes between the nodes: the new owner picks the connection up
mid-stream and computes the same backend and the same translation as the old one did."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from appliance.lab import topology
from appliance.lab.netlab import NetLab
from appliance.lab.settle import settle
from tests.lab.labkit import MakeLab
from tests.lab.test_lab_ownership import wait_owner

pytestmark = pytest.mark.timeout(240)

CONNECTIONS = 12


def echo_service(lab: NetLab, family: str = "ipv4") -> str:
    leader = lab.wait_leader()
    pool = {"addresses": [topology.L2_VIPS4, topology.L2_VIPS6], "default": True}
    assert lab.api(leader, "PUT", "/v1/pools/lan", pool) is not None
    backends = [str(getattr(h, family)) for h in lab.plan.of_kind("backend")]
    tcp = [{"address": b, "port": topology.BACKEND_TCP_PORT} for b in backends]
    udp = [{"address": b, "port": topology.BACKEND_UDP_PORT} for b in backends]
    ports = [
        {"port": topology.BACKEND_TCP_PORT, "backends": tcp},
        {"port": topology.BACKEND_UDP_PORT, "protocol": "udp", "backends": udp},
    ]
    body = {"ports": ports, "ip_family": family}
    answer = lab.api(leader, "PUT", "/v1/services/t/c/echo", body)
    assert answer is not None
    return str(answer["address"])


def echo(sock: socket.socket, text: str) -> tuple[str, str]:
    """One line through a connection: the backend that answered and the peer it saw."""
    sock.sendall(text.encode() + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(200)
        assert chunk, f"the connection was closed; had {answer!r}"
        answer += chunk
    name, peer, line = answer.decode().split(" ", 2)
    assert line.strip() == text
    return name, peer


def who_is(sock: socket.socket) -> str:
    """The backend's name for the connection: its number there and the port it sees."""
    sock.sendall(b"WHO\n")
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(200)
        assert chunk, f"the connection was closed; had {answer!r}"
        answer += chunk
    name, _, what = answer.decode().strip().split(" ", 2)
    return f"{name} {what}"


def datagram(sock: socket.socket, text: str) -> str:
    sock.send(text.encode())
    name, _, data = sock.recv(500).decode().split(" ", 2)
    assert data == text
    return name


@pytest.fixture
def lab(make_lab: MakeLab) -> Iterator[NetLab]:
    yield make_lab()


@pytest.mark.parametrize(("how", "family"), [("kill", "ipv4"), ("drain", "ipv4"), ("kill", "ipv6")])
def test_connections_keep_their_backend_through_a_failover(
    lab: NetLab, how: str, family: str
) -> None:
    vip = echo_service(lab, family)
    nodes = lab.node_names()
    settled = settle(lab, [vip])
    owner = settled.owners[vip]
    holder = lab.in_ns("client")
    conns: list[socket.socket] = []
    try:
        for _ in range(CONNECTIONS):
            conns.append(holder.run(socket.create_connection, (vip, topology.BACKEND_TCP_PORT), 5))
        before = [echo(c, f"before {i}") for i, c in enumerate(conns)]
        who = [who_is(c) for c in conns]
        # Backends see the VIP, not the node: the address a new owner can translate to alike.
        assert {peer for _, peer in before} == {vip}
        assert len({name for name, _ in before}) > 1  # spread over backends
        inet = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
        udp = holder.run(socket.socket, inet, socket.SOCK_DGRAM)
        udp.settimeout(5)
        udp.connect((vip, topology.BACKEND_UDP_PORT))
        udp_backend = datagram(udp, "before")

        if how == "kill":
            lab.crash(owner, "kill")
        else:
            assert lab.api(settled.leader, "POST", f"/v1/nodes/{owner}/drain") is not None
        others = [n for n in nodes if n != owner]
        new_owner = wait_owner(lab, vip, others, not_on=(owner,))

        for i, conn in enumerate(conns):
            conn.settimeout(15)  # the first segment may wait out a retransmission
            # The same backend answers on the same connection: a backend that lost it would
            # have reset it, and a new connection would need a new handshake.
            assert echo(conn, f"after {i}") == before[i], (i, new_owner)
            # ... and it is one connection to the backend, with the client's port kept: the
            # backend's count of accepted connections did not move for it.
            assert who_is(conn) == who[i], (i, new_owner)
        assert datagram(udp, "after") == udp_backend
        udp.close()
    finally:
        for conn in conns:
            conn.close()
        holder.close()
