"""What the host's data interface offers an announcer: its MAC and the subnets it sits on."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Network, IPv6Network

from pyroute2 import IPRoute


class InterfaceError(Exception):
    """The data interface is missing or unusable; the message says which and why."""


def interface_networks(name: str) -> list[IPv4Network | IPv6Network]:
    """The subnets of the addresses on `name` (in this process's network namespace).

    IPv6 link-local subnets are left out: no VIP lives there.
    """
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise InterfaceError(f"no interface named {name!r} on this host")
        networks: list[IPv4Network | IPv6Network] = []
        for msg in ipr.get_addr(index=found[0]):
            address = msg.get_attr("IFA_ADDRESS")
            network = ipaddress.ip_network(f"{address}/{msg['prefixlen']}", strict=False)
            if network.is_link_local:
                continue
            networks.append(network)
    return networks
