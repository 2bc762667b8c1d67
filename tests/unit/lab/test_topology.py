"""The lab's network plan (appliance.lab.topology): names, addresses, MACs, routes, sysctls.

Pure tables, no root. The invariants are checked over plans from the smallest to the largest the
CLI can ask for (nodes, backends, router or not), so a new host kind or address cannot slip out
of the documentation ranges or collide with another host.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import Counter
from collections.abc import Iterator

import pytest

from appliance.lab.topology import (
    BGP_VIPS4,
    BGP_VIPS6,
    CLIENT4,
    CLIENT6,
    L2_VIPS4,
    L2_VIPS6,
    LAN4,
    LAN6,
    MAX_BACKENDS,
    MAX_NODES,
    NS_PREFIX,
    Host,
    Interface,
    LabPlan,
    plan,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The only networks a lab may use (RFC 5737 and RFC 3849): DESIGN.md "The lab".
ALLOWED = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
IFNAMSIZ = 15  # Linux interface names: at most 15 characters
RUN = "abc123"


def every_plan(run_id: str = RUN) -> Iterator[LabPlan]:
    """Plans at and next to every limit, with and without a router."""
    for nodes, backends, router in itertools.product(
        (1, 2, 3, MAX_NODES), (0, 1, 2, MAX_BACKENDS - 1, MAX_BACKENDS), (False, True)
    ):
        yield plan(run_id, nodes, backends, router)


def interfaces(lab: LabPlan) -> Iterator[tuple[Host, Interface]]:
    for host in lab.hosts:
        for iface in host.interfaces:
            yield host, iface


def allowed(item: IPAddress | IPNetwork) -> bool:
    """True if the address or the whole network lies in one of the allowed networks."""
    if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
        first, last = item[0], item[-1]
        return any(first in n and last in n for n in ALLOWED)
    return any(item in n for n in ALLOWED)


def address_range(text: str) -> tuple[IPAddress, IPAddress]:
    first, _, last = text.partition("-")
    return ipaddress.ip_address(first), ipaddress.ip_address(last)


def in_range(addr: IPAddress, text: str) -> bool:
    first, last = address_range(text)
    return addr.version == first.version and int(first) <= int(addr) <= int(last)


# ------------------------------------------------------------------------------- names


@pytest.mark.parametrize("router", [False, True])
def test_every_namespace_carries_the_run_prefix(router: bool) -> None:
    lab = plan(RUN, nodes=3, backends=2, router=router)
    prefix = f"{NS_PREFIX}{RUN}-"
    assert NS_PREFIX == "rlb-"
    assert lab.switch_ns == f"rlb-{RUN}-switch"
    assert all(ns.startswith(prefix) for ns in lab.namespaces())
    assert lab.namespaces() == [lab.switch_ns, *(h.netns for h in lab.hosts)]
    assert len(set(lab.namespaces())) == len(lab.namespaces())
    expected = ["n1", "n2", "n3", "b1", "b2", *(["router"] if router else []), "client"]
    assert lab.names() == expected
    assert [h.netns for h in lab.hosts] == [f"rlb-{RUN}-{name}" for name in expected]


def test_two_runs_share_no_namespace() -> None:
    one, two = plan("aaaaaa", 9, 40, True), plan("aaaaab", 9, 40, True)
    assert not set(one.namespaces()) & set(two.namespaces())


def test_host_kinds_and_lookup() -> None:
    lab = plan(RUN, nodes=2, backends=1, router=True)
    assert [h.name for h in lab.of_kind("node")] == ["n1", "n2"]
    assert [h.name for h in lab.of_kind("backend")] == ["b1"]
    assert [h.name for h in lab.of_kind("router")] == ["router"]
    assert [h.name for h in lab.of_kind("client")] == ["client"]
    assert lab.host("b1").kind == "backend"
    with pytest.raises(KeyError, match="'b2'"):
        lab.host("b2")


def test_interface_and_switch_port_names_fit_ifnamsiz() -> None:
    for lab in (plan(RUN, MAX_NODES, MAX_BACKENDS, r) for r in (False, True)):
        names = [lab.bridge]
        for _, iface in interfaces(lab):
            names.append(iface.name)
            if iface.switch_port is not None:
                names.append(iface.switch_port)
        too_long = [n for n in names if len(n) > IFNAMSIZ]
        assert not too_long, f"interface names over {IFNAMSIZ} characters: {too_long}"


def test_switch_ports_are_unique() -> None:
    for lab in every_plan():
        ports = [i.switch_port for _, i in interfaces(lab) if i.switch_port is not None]
        assert len(ports) == len(set(ports)), lab
        assert lab.bridge not in ports


# ------------------------------------------------------------------------------- addresses


def test_the_plans_networks_are_documentation_ranges() -> None:
    for net in (LAN4, LAN6, CLIENT4, CLIENT6):
        assert allowed(net), net
    for text in (BGP_VIPS4, BGP_VIPS6):
        assert allowed(ipaddress.ip_network(text)), text
    for text in (L2_VIPS4, L2_VIPS6):
        first, last = address_range(text)
        assert allowed(first) and allowed(last), text
        assert first in (LAN4 if first.version == 4 else LAN6)


def test_every_host_interface_is_in_the_documentation_ranges() -> None:
    for lab in every_plan():
        for host, iface in interfaces(lab):
            for addr in (iface.ipv4, iface.ipv6):
                assert allowed(addr.ip), f"{host.name}/{iface.name}: {addr} outside {ALLOWED}"
                assert allowed(addr.network), f"{host.name}/{iface.name}: {addr.network}"
            assert iface.ipv4.version == 4 and iface.ipv6.version == 6


def test_every_route_stays_in_the_documentation_ranges_and_its_gateway_is_on_link() -> None:
    for lab in every_plan():
        for host in lab.hosts:
            on_link = [a.network for i in host.interfaces for a in (i.ipv4, i.ipv6)]
            for dst, gateway in (*host.routes4, *host.routes6):
                if dst != "default":
                    assert allowed(ipaddress.ip_network(dst)), f"{host.name}: route to {dst}"
                gw = ipaddress.ip_address(gateway)
                assert allowed(gw), f"{host.name}: gateway {gateway}"
                assert any(gw in net for net in on_link), f"{host.name}: {gateway} not on link"
            # No default route out of the lab except the client's, via the lab's router.
            defaults = [g for d, g in (*host.routes4, *host.routes6) if d == "default"]
            if defaults:
                assert host.kind == "client" and lab.router, host


def test_addresses_are_unique_and_not_vips() -> None:
    vips4 = ipaddress.ip_network(BGP_VIPS4)
    vips6 = ipaddress.ip_network(BGP_VIPS6)
    for lab in every_plan():
        addresses = [a.ip for _, i in interfaces(lab) for a in (i.ipv4, i.ipv6)]
        duplicates = {a for a, n in Counter(addresses).items() if n > 1}
        assert not duplicates, f"{lab.names()}: {duplicates}"
        for addr in addresses:
            assert addr not in vips4 and addr not in vips6, addr
            assert not in_range(addr, L2_VIPS4) and not in_range(addr, L2_VIPS6), addr


def test_lan_layout() -> None:
    lab = plan(RUN, nodes=3, backends=2)
    assert [str(h.ipv4) for h in lab.hosts] == [
        "192.0.2.11",
        "192.0.2.12",
        "192.0.2.13",
        "192.0.2.51",
        "192.0.2.52",
        "192.0.2.100",
    ]
    assert all(h.ipv6 in LAN6 for h in lab.hosts)
    assert all(h.interfaces[0].ipv4.network == LAN4 for h in lab.hosts)


# ------------------------------------------------------------------------------- MACs


def test_macs_are_unique_locally_administered_unicast() -> None:
    for lab in every_plan():
        macs = [i.mac for _, i in interfaces(lab)]
        assert len(macs) == len(set(macs)), lab.names()
        for mac in macs:
            octets = mac.split(":")
            assert len(octets) == 6 and all(len(o) == 2 for o in octets), mac
            assert mac == mac.lower()
            first = int(octets[0], 16)
            assert first & 0x02, f"{mac} is not locally administered"
            assert not first & 0x01, f"{mac} is multicast"


def test_macs_are_stable_for_a_run_and_differ_between_runs() -> None:
    one, again, other = plan("aaaaaa"), plan("aaaaaa"), plan("bbbbbb")
    assert [i.mac for _, i in interfaces(one)] == [i.mac for _, i in interfaces(again)]
    assert not {i.mac for _, i in interfaces(one)} & {i.mac for _, i in interfaces(other)}


# ------------------------------------------------------------------------------- router mode


def test_without_router_the_client_is_on_the_lan_and_nobody_has_routes() -> None:
    lab = plan(RUN, nodes=3, backends=2, router=False)
    assert not lab.router
    assert not lab.of_kind("router")
    client = lab.host("client")
    assert client.interfaces[0].switch_port is not None
    assert client.interfaces[0].ipv4.network == LAN4
    assert all(not h.routes4 and not h.routes6 for h in lab.hosts)


def test_router_mode_puts_the_client_behind_the_router() -> None:
    lab = plan(RUN, nodes=3, backends=2, router=True)
    assert lab.router
    router, client = lab.host("router"), lab.host("client")
    lan_if, client_side = router.interfaces
    assert lan_if.switch_port is not None and lan_if.ipv4.network == LAN4
    assert (str(lan_if.ipv4.ip), str(lan_if.ipv6.ip)) == ("192.0.2.1", "2001:db8:1::1")
    # The client's link is point-to-point to the router, not a switch port.
    assert len(client.interfaces) == 1
    assert client.interfaces[0].switch_port is None and client_side.switch_port is None
    assert client.interfaces[0].ipv4.network == client_side.ipv4.network == CLIENT4
    assert client.interfaces[0].ipv6.network == client_side.ipv6.network == CLIENT6
    assert client.routes4 == (("default", str(client_side.ipv4.ip)),)
    assert client.routes6 == (("default", str(client_side.ipv6.ip)),)
    # Nodes and backends answer the client through the router.
    for host in lab.of_kind("node") + lab.of_kind("backend"):
        assert host.routes4 == ((str(CLIENT4), str(lan_if.ipv4.ip)),), host.name
        assert host.routes6 == ((str(CLIENT6), str(lan_if.ipv6.ip)),), host.name
    assert not router.routes4 and not router.routes6


# ------------------------------------------------------------------------------- sysctls


def test_node_sysctls_forward_and_ignore_arp_for_foreign_addresses() -> None:
    for lab in (plan(RUN, 3, 2, False), plan(RUN, 3, 2, True)):
        for node in lab.of_kind("node"):
            sysctls = dict(node.sysctls)
            assert len(sysctls) == len(node.sysctls), "a sysctl is set twice"
            assert sysctls["net/ipv4/ip_forward"] == "1"
            assert sysctls["net/ipv6/conf/all/forwarding"] == "1"
            assert sysctls["net/ipv4/conf/all/arp_ignore"] == "1"
            assert sysctls["net/ipv4/conf/default/arp_ignore"] == "1"
            assert sysctls["net/ipv4/conf/all/arp_announce"] == "2"


def test_every_host_sets_no_dad_and_no_redirects_and_only_nodes_and_router_forward() -> None:
    lab = plan(RUN, 3, 2, True)
    for host in lab.hosts:
        sysctls = dict(host.sysctls)
        assert sysctls["net/ipv6/conf/all/accept_dad"] == "0", host.name
        assert sysctls["net/ipv6/conf/default/accept_dad"] == "0", host.name
        assert sysctls["net/ipv4/conf/default/send_redirects"] == "0", host.name
        assert sysctls["net/ipv4/conf/all/send_redirects"] == "0", host.name
        forwards = sysctls.get("net/ipv4/ip_forward") == "1"
        assert forwards == (host.kind in ("node", "router")), host.name
        assert ("net/ipv4/conf/all/arp_ignore" in sysctls) == (host.kind == "node"), host.name
        assert all(key.startswith("net/") for key in sysctls), host.name


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"nodes": 0}, "0"),
        ({"nodes": -1}, "-1"),
        ({"nodes": MAX_NODES + 1}, str(MAX_NODES + 1)),
        ({"backends": -1}, "-1"),
        ({"backends": MAX_BACKENDS + 1}, str(MAX_BACKENDS + 1)),
    ],
)
def test_bad_counts_raise_value_error_naming_the_value(kwargs: dict[str, int], named: str) -> None:
    (field,) = kwargs
    with pytest.raises(ValueError) as info:
        plan(RUN, **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"{field} must be"), info.value
    assert str(info.value).endswith(f"got {named}"), info.value


@pytest.mark.parametrize("run_id", ["", "abc-12", "abc 12", "abcdefghi", "../x", "a/b", "r\n"])
def test_bad_run_ids_raise_value_error_naming_the_value(run_id: str) -> None:
    with pytest.raises(ValueError, match="run id") as info:
        plan(run_id)
    assert repr(run_id) in str(info.value)


@pytest.mark.parametrize(("nodes", "backends"), [(1, 0), (MAX_NODES, MAX_BACKENDS)])
def test_the_limits_themselves_are_accepted(nodes: int, backends: int) -> None:
    lab = plan("a", nodes, backends)
    assert len(lab.of_kind("node")) == nodes
    assert len(lab.of_kind("backend")) == backends
    assert plan("12345678").run_id == "12345678"
