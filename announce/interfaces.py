"""What the host's data interface offers an announcer: its MAC and the subnets it sits on."""

from __future__ import annotations

import concurrent.futures
import ipaddress
from ipaddress import IPv4Network, IPv6Network

from pyroute2 import IPRoute


class InterfaceError(Exception):
    """The data interface is missing or unusable; the message says which and why."""


def interface_networks(name: str) -> list[IPv4Network | IPv6Network]:
    """The subnets of the addresses on `name` (in the calling thread's network namespace).

    IPv6 link-local subnets are left out: no VIP lives there. Safe to call from a coroutine:
    pyroute2's synchronous API runs its own event loop and refuses to run inside a running
    one (the API's handlers), so the query runs on a short-lived thread, which inherits the
    caller's network namespace.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netlink") as pool:
        return pool.submit(_networks, name).result()


def _networks(name: str) -> list[IPv4Network | IPv6Network]:
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
