"""Which VIPs of `bgp` pools this node announces, and as which routes. Pure.

Unlike a layer-2 VIP, which one node owns, a routed VIP is announced by every node able to serve
it, and the router spreads flows over them (ECMP). A node is able while it holds a valid lease
(it is in quorum), is not drained, and finds at least one of the VIP's backends healthy itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address

from announce.bgp_config import Route
from appliance.model import Backend, Pool, Service

Healthy = Callable[[str, Backend], bool]


def serves(services: Iterable[Service], healthy: Healthy | None) -> bool:
    """At least one backend (of its VIP's family) of these services is healthy here."""
    return any(
        b.address.version == service.address.version
        and (healthy is None or healthy(service.spec.id, b))
        for service in services
        for port in service.spec.ports
        for b in port.backends
    )


def routed_to_announce(
    routed: Mapping[str, Pool],
    services: Mapping[str, Service],
    able: bool,
    healthy: Healthy | None,
) -> dict[str, Pool]:
    """The routed VIPs (with their pool) this node announces now (the whole set at once)."""
    if not able:
        return {}
    by_address: dict[str, list[Service]] = {}
    for service in services.values():
        by_address.setdefault(str(service.address), []).append(service)
    return {vip: pool for vip, pool in routed.items() if serves(by_address.get(vip, ()), healthy)}


def routes(
    wanted: Mapping[str, Pool], next_hop4: IPv4Address | None, next_hop6: IPv6Address | None
) -> list[Route]:
    """The routes for `wanted`; a family without a next hop is not announced."""
    out = []
    for vip, pool in sorted(wanted.items()):
        address = ip_address(vip)
        hop = next_hop4 if address.version == 4 else next_hop6
        if hop is None:
            continue
        attrs = pool.bgp
        out.append(
            Route(
                vip=address,
                next_hop=hop,
                communities=tuple(attrs.communities) if attrs else (),
                large_communities=tuple(attrs.large_communities) if attrs else (),
                local_pref=attrs.local_pref if attrs else None,
                med=attrs.med if attrs else None,
            )
        )
    return out
