"""The lab's network plan (pure): which namespaces, links and addresses a lab run has.

One switch namespace holds a bridge, the LAN. Appliance nodes, backends and (without a router)
the client plug into it with a veth each; the switch side of a node's veth is what "link down"
cuts. With a router, the client sits behind it on its own link, so traffic to VIPs is routed
(the BGP mode). Only documentation ranges are used:

    LAN            192.0.2.0/24     2001:db8:1::/64   router .1, nodes .11+, backends .51+,
                                                      client .100 (no router); L2 VIPs .200-.250
    client link    203.0.113.0/24   2001:db8:3::/64   router .1, client .2 (with --router)
    BGP VIPs       198.51.100.0/24  2001:db8:2::/64   routed to the nodes by BGP

Every namespace name starts with `rlb-<run id>-`, so runs never collide and `lab down --all`
finds the leftovers of crashed runs.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field

NS_PREFIX = "rlb-"
MAX_NODES = 9
MAX_BACKENDS = 40
LAN4 = ipaddress.IPv4Network("192.0.2.0/24")
LAN6 = ipaddress.IPv6Network("2001:db8:1::/64")
CLIENT4 = ipaddress.IPv4Network("203.0.113.0/24")
CLIENT6 = ipaddress.IPv6Network("2001:db8:3::/64")
L2_VIPS4 = "192.0.2.200-192.0.2.250"
L2_VIPS6 = "2001:db8:1::200-2001:db8:1::250"
BGP_VIPS4 = "198.51.100.0/24"
BGP_VIPS6 = "2001:db8:2::/120"
RAFT_PORT = 7001
API_PORT = 8080
BACKEND_HTTP_PORT = 80
BACKEND_TCP_PORT = 9000
BACKEND_UDP_PORT = 9001


@dataclass(frozen=True)
class Interface:
    name: str  # inside the host's namespace
    switch_port: str | None  # the veth end in the switch namespace, None for point-to-point
    mac: str
    ipv4: ipaddress.IPv4Interface
    ipv6: ipaddress.IPv6Interface


@dataclass(frozen=True)
class Host:
    name: str  # n1, b1, client, router
    kind: str  # node, backend, client, router
    netns: str
    interfaces: tuple[Interface, ...]
    routes4: tuple[tuple[str, str], ...] = ()  # (destination, gateway)
    routes6: tuple[tuple[str, str], ...] = ()
    sysctls: tuple[tuple[str, str], ...] = field(default=())

    @property
    def ipv4(self) -> ipaddress.IPv4Address:
        return self.interfaces[0].ipv4.ip

    @property
    def ipv6(self) -> ipaddress.IPv6Address:
        return self.interfaces[0].ipv6.ip


@dataclass(frozen=True)
class LabPlan:
    run_id: str
    switch_ns: str
    bridge: str
    hosts: tuple[Host, ...]
    router: bool

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} in lab {self.run_id} (have {self.names()})")

    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def of_kind(self, kind: str) -> list[Host]:
        return [h for h in self.hosts if h.kind == kind]

    def namespaces(self) -> list[str]:
        return [self.switch_ns, *(h.netns for h in self.hosts)]


# Set in each namespace before its interfaces exist, so they inherit them through `default`.
_COMMON = (
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_ra", "0"),
    ("net/ipv4/conf/all/send_redirects", "0"),
    ("net/ipv4/conf/default/send_redirects", "0"),
)
_FORWARDING = (
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
)
# Appliance nodes: the kernel must not answer ARP for addresses that are not on the interface
# (VIPs are answered from userspace by their owner only), nor announce them as sources.
_NODE = (
    ("net/ipv4/conf/all/arp_ignore", "1"),
    ("net/ipv4/conf/default/arp_ignore", "1"),
    ("net/ipv4/conf/all/arp_announce", "2"),
    ("net/ipv4/conf/default/arp_announce", "2"),
)


# The router hashes flows over equal-cost next hops by ports too (L4), not only by address: one
# client's connections then spread over every appliance node announcing a VIP.
_ROUTER = (
    ("net/ipv4/fib_multipath_hash_policy", "1"),
    ("net/ipv6/fib_multipath_hash_policy", "1"),
)


def namespace(run_id: str, host: str) -> str:
    return f"{NS_PREFIX}{run_id}-{host}"


def _mac(run_id: str, host: str, index: int) -> str:
    # Locally administered, unicast, stable for a run: readable in captures and neighbour dumps.
    digest = hashlib.sha256(f"{run_id}/{host}/{index}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def _lan_interface(run_id: str, host: str, host_octet: int) -> Interface:
    return Interface(
        name="eth0",
        switch_port=f"p-{host}",
        mac=_mac(run_id, host, 0),
        ipv4=ipaddress.IPv4Interface(f"{LAN4[host_octet]}/{LAN4.prefixlen}"),
        ipv6=ipaddress.IPv6Interface(f"{LAN6[host_octet]}/{LAN6.prefixlen}"),
    )


def plan(run_id: str, nodes: int = 3, backends: int = 2, router: bool = False) -> LabPlan:
    """The whole network of a lab run. Raises ValueError naming a bad count."""
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"nodes must be 1-{MAX_NODES}, got {nodes}")
    if not 0 <= backends <= MAX_BACKENDS:
        raise ValueError(f"backends must be 0-{MAX_BACKENDS}, got {backends}")
    if not run_id.isalnum() or len(run_id) > 8:
        raise ValueError(f"run id must be 1-8 letters or digits, got {run_id!r}")
    hosts: list[Host] = []
    via4 = [] if not router else [(str(CLIENT4), str(LAN4[1]))]
    via6 = [] if not router else [(str(CLIENT6), str(LAN6[1]))]
    for i in range(1, nodes + 1):
        name = f"n{i}"
        hosts.append(
            Host(
                name=name,
                kind="node",
                netns=namespace(run_id, name),
                interfaces=(_lan_interface(run_id, name, 10 + i),),
                routes4=tuple(via4),
                routes6=tuple(via6),
                sysctls=_COMMON + _FORWARDING + _NODE,
            )
        )
    for i in range(1, backends + 1):
        name = f"b{i}"
        hosts.append(
            Host(
                name=name,
                kind="backend",
                netns=namespace(run_id, name),
                interfaces=(_lan_interface(run_id, name, 50 + i),),
                routes4=tuple(via4),
                routes6=tuple(via6),
                sysctls=_COMMON,
            )
        )
    if router:
        client_if = Interface(
            name="eth0",
            switch_port=None,
            mac=_mac(run_id, "client", 0),
            ipv4=ipaddress.IPv4Interface(f"{CLIENT4[2]}/{CLIENT4.prefixlen}"),
            ipv6=ipaddress.IPv6Interface(f"{CLIENT6[2]}/{CLIENT6.prefixlen}"),
        )
        router_client_if = Interface(
            name="eth1",
            switch_port=None,
            mac=_mac(run_id, "router", 1),
            ipv4=ipaddress.IPv4Interface(f"{CLIENT4[1]}/{CLIENT4.prefixlen}"),
            ipv6=ipaddress.IPv6Interface(f"{CLIENT6[1]}/{CLIENT6.prefixlen}"),
        )
        hosts.append(
            Host(
                name="router",
                kind="router",
                netns=namespace(run_id, "router"),
                interfaces=(_lan_interface(run_id, "router", 1), router_client_if),
                sysctls=_COMMON + _FORWARDING + _ROUTER,
            )
        )
        hosts.append(
            Host(
                name="client",
                kind="client",
                netns=namespace(run_id, "client"),
                interfaces=(client_if,),
                routes4=(("default", str(CLIENT4[1])),),
                routes6=(("default", str(CLIENT6[1])),),
                sysctls=_COMMON,
            )
        )
    else:
        hosts.append(
            Host(
                name="client",
                kind="client",
                netns=namespace(run_id, "client"),
                interfaces=(_lan_interface(run_id, "client", 100),),
                sysctls=_COMMON,
            )
        )
    return LabPlan(
        run_id=run_id,
        switch_ns=namespace(run_id, "switch"),
        bridge="br0",
        hosts=tuple(hosts),
        router=router,
    )
