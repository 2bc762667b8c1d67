"""exabgp's configuration and API commands, rendered by pure functions (golden-tested).

One exabgp per agent; its only API process is the relay `announce.exabgp_relay`, which joins
exabgp's stdin/stdout to the agent's unix socket. Each VIP is a /32 or /128 route with this
node's address of the same family as next hop (one IPv4 session carries IPv6 routes too, so the
next hop is always explicit), and the attributes of its pool.

Route refresh is advertised (and answered from exabgp's adj-rib-out): a router that restarted
and met the nodes before its policy was bound, or whose policy changed, asks for the routes
again instead of keeping the verdict it gave first (FRR denies everything until its route-maps
exist). Graceful restart is not: a router helping a restarting speaker keeps its paths for the
restart time, and a node whose agent died must lose its paths at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

Address = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class Peer:
    address: Address
    asn: int
    local_address: Address  # of the peer's family: exabgp refuses its whole config otherwise
    hold_time: int = 3
    passive: bool = False


@dataclass(frozen=True, slots=True)
class Session:
    """This node's side of its sessions."""

    asn: int
    router_id: IPv4Address
    peers: tuple[Peer, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """One VIP as announced: prefix, next hop and the pool's path attributes."""

    vip: Address
    next_hop: Address
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    local_pref: int | None = None
    med: int | None = None

    @property
    def prefix(self) -> str:
        return f"{self.vip}/{32 if self.vip.version == 4 else 128}"


def render_config(session: Session, relay: Sequence[str]) -> str:
    """exabgp.conf for `session`; `relay` is the API process's argv (absolute paths)."""
    run = " ".join(relay)
    lines = [
        "process raftlb {",
        f"    run {run};",
        "    encoder json;",
        "}",
        "",
    ]
    for peer in session.peers:
        lines += [
            f"neighbor {peer.address} {{",
            f"    router-id {session.router_id};",
            f"    local-address {peer.local_address};",
            f"    local-as {session.asn};",
            f"    peer-as {peer.asn};",
            f"    hold-time {peer.hold_time};",
            *(["    passive;"] if peer.passive else []),
            "    capability {",
            "        route-refresh;",
            "    }",
            "    family {",
            "        ipv4 unicast;",
            "        ipv6 unicast;",
            "    }",
            "    api {",
            "        processes [ raftlb ];",
            "        neighbor-changes;",
            # A router's route refresh requests, counted: the sign it re-read its policy.
            "        receive {",
            "            parsed;",
            "            refresh;",
            "        }",
            "    }",
            "}",
            "",
        ]
    return "\n".join(lines)


def _attributes(route: Route) -> str:
    parts = [f"next-hop {route.next_hop}"]
    if route.communities:
        parts.append(f"community [ {' '.join(route.communities)} ]")
    if route.large_communities:
        parts.append(f"large-community [ {' '.join(route.large_communities)} ]")
    if route.local_pref is not None:
        parts.append(f"local-preference {route.local_pref}")
    if route.med is not None:
        parts.append(f"med {route.med}")
    return " ".join(parts)


def announce_command(route: Route) -> str:
    return f"announce route {route.prefix} {_attributes(route)}"


def withdraw_command(route: Route) -> str:
    return f"withdraw route {route.prefix} next-hop {route.next_hop}"


def changes(old: Iterable[Route], new: Iterable[Route]) -> list[str]:
    """The API commands that take exabgp from announcing `old` to announcing `new`:
    withdrawals first (a VIP whose attributes changed is simply announced again)."""
    before = {r.prefix: r for r in old}
    after = {r.prefix: r for r in new}
    out = [withdraw_command(r) for p, r in sorted(before.items()) if p not in after]
    out += [announce_command(r) for p, r in sorted(after.items()) if before.get(p) != r]
    return out
