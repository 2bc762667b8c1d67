"""BGP, the pure parts: exabgp's config and commands, and which routed VIPs a node announces."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from announce.bgp import exabgp_binary
from announce.bgp_config import (
    Peer,
    Route,
    Session,
    announce_command,
    changes,
    render_config,
    withdraw_command,
)
from appliance.model import Pool, Service, ServiceSpec
from appliance.routing import routed_to_announce, routes

HOP4 = IPv4Address("192.0.2.11")
HOP6 = IPv6Address("2001:db8:1::b")


def test_config_has_both_families_the_relay_and_neighbour_changes() -> None:
    session = Session(64512, HOP4, (Peer(IPv4Address("192.0.2.1"), 64500, HOP4, 3),))
    text = render_config(session, ["/venv/bin/python", "-m", "announce.exabgp_relay", "/x.sock"])
    assert "run /venv/bin/python -m announce.exabgp_relay /x.sock;" in text
    for line in (
        "neighbor 192.0.2.1 {",
        "local-as 64512;",
        "peer-as 64500;",
        "hold-time 3;",
        "ipv4 unicast;",
        "ipv6 unicast;",
        "processes [ raftlb ];",
        "neighbor-changes;",
        "encoder json;",
        "route-refresh;",  # a router can ask for the routes again (its policy changed)
    ):
        assert line in text, line
    assert "graceful-restart" not in text  # a dead node's paths must go at once


def test_each_peer_has_a_source_of_its_own_family() -> None:
    peers = (
        Peer(IPv4Address("192.0.2.1"), 64500, HOP4),
        Peer(IPv6Address("2001:db8:1::1"), 64500, HOP6),
    )
    text = render_config(Session(64512, HOP4, peers), ["relay"])
    v4, v6 = text.split("neighbor ")[1:]
    assert v4.startswith("192.0.2.1 {") and "local-address 192.0.2.11;" in v4
    assert v6.startswith("2001:db8:1::1 {") and "local-address 2001:db8:1::b;" in v6


def test_commands_carry_next_hop_and_attributes() -> None:
    route = Route(
        ip_address("198.51.100.7"),
        HOP4,
        communities=("64512:100",),
        large_communities=("64512:1:2",),
        local_pref=200,
        med=10,
    )
    assert announce_command(route) == (
        "announce route 198.51.100.7/32 next-hop 192.0.2.11 community [ 64512:100 ] "
        "large-community [ 64512:1:2 ] local-preference 200 med 10"
    )
    assert withdraw_command(Route(ip_address("2001:db8:2::7"), HOP6)) == (
        "withdraw route 2001:db8:2::7/128 next-hop 2001:db8:1::b"
    )


def test_changes_withdraw_first_and_resend_only_what_changed() -> None:
    a = Route(ip_address("198.51.100.1"), HOP4)
    b = Route(ip_address("198.51.100.2"), HOP4)
    b_med = Route(ip_address("198.51.100.2"), HOP4, med=5)
    c = Route(ip_address("198.51.100.3"), HOP4)
    assert changes([a, b], [b_med, c]) == [
        withdraw_command(a),
        announce_command(b_med),
        announce_command(c),
    ]
    assert changes([a], [a]) == []


def svc(service_id: str, vip: str, backends: list[str]) -> Service:
    spec = ServiceSpec.model_validate(
        {
            "id": service_id,
            "ports": [{"port": 80, "backends": [{"address": b, "port": 80} for b in backends]}],
        }
    )
    return Service(spec=spec, address=ip_address(vip))


def test_a_node_announces_routed_vips_with_a_healthy_backend_while_able() -> None:
    pool = Pool.model_validate(
        {"name": "routed", "addresses": ["198.51.100.0/24"], "announce": "bgp", "bgp": {"med": 7}}
    )
    services = {
        "a": svc("a", "198.51.100.1", ["192.0.2.51"]),
        "b": svc("b", "198.51.100.2", ["192.0.2.52"]),
        "c": svc("c", "198.51.100.3", []),  # no backend at all
    }
    routed = {"198.51.100.1": pool, "198.51.100.2": pool, "198.51.100.3": pool}

    def healthy(service_id: str, backend: object) -> bool:
        return service_id != "b"

    assert sorted(routed_to_announce(routed, services, True, healthy)) == ["198.51.100.1"]
    assert routed_to_announce(routed, services, False, healthy) == {}  # no lease, or drained
    found = routes({"198.51.100.1": pool, "2001:db8:2::1": pool}, HOP4, None)
    assert [(str(r.vip), r.med) for r in found] == [("198.51.100.1", 7)]  # no v6 next hop


def test_a_command_with_a_line_break_never_reaches_exabgp(tmp_path: Path) -> None:
    """A zoned address may carry a newline: "… 2001:db8::78%x\\nannounce route 203.0.113.7 …"
    would be a second command. The model refuses it; the announcer drops such a command too."""
    from announce.bgp import BgpAnnouncer

    class Writer:
        data = b""

        def write(self, data: bytes) -> None:
            self.data += data

    session = Session(64512, HOP4, (Peer(IPv4Address("192.0.2.1"), 64500, HOP4, 3),))
    announcer = BgpAnnouncer(session, tmp_path)
    writer = Writer()
    announcer._writer = writer  # type: ignore[assignment]
    announcer._send(["announce route 192.0.2.5/32 next-hop 192.0.2.11", "a\nannounce route x"])
    assert writer.data == b"announce route 192.0.2.5/32 next-hop 192.0.2.11\n"


def test_exabgp_itself_accepts_the_rendered_config_of_both_families(tmp_path: Path) -> None:
    """exabgp's own parser on what the agent renders: route refresh and a session per family
    parse; one session whose ends differ in family is refused whole (what the config check
    keeps from ever reaching exabgp)."""
    peers = (
        Peer(IPv4Address("192.0.2.1"), 64500, HOP4),
        Peer(IPv6Address("2001:db8:1::1"), 64500, HOP6),
    )

    def validate(session: Session) -> subprocess.CompletedProcess[str]:
        conf = tmp_path / "exabgp.conf"
        conf.write_text(render_config(session, ["/bin/cat"]))
        argv = [exabgp_binary(), "validate", str(conf)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    good = validate(Session(64512, HOP4, peers))
    assert good.returncode == 0, good.stdout + good.stderr
    mixed = (Peer(IPv6Address("2001:db8:1::1"), 64500, HOP4),)
    bad = validate(Session(64512, HOP4, mixed))
    assert bad.returncode != 0
    assert "same family" in bad.stdout + bad.stderr
