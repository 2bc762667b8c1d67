"""The nftables ruleset of one node, rendered from what it serves. Pure: no I/O, golden-tested.

One table, `inet raftlb`, owned by raftlb and replaced whole (`nft -f` of this text is atomic):

- prerouting (nat): each served VIP:port DNATs new connections to a backend picked by
  `numgen random` (default) or `jhash` of the client address (source affinity); weights are
  ranges of the map's keys. conntrack keeps a connection on the backend it got.
- forward (filter): a VIP:port without a healthy backend rejects at once (TCP reset, ICMP port
  unreachable for UDP) instead of letting clients time out; any other traffic still addressed
  to a VIP was not DNATed and is rejected rather than routed back onto the LAN.
- postrouting (nat): DNATed connections are masqueraded, so backends answer through this node
  (a backend on the client's LAN would otherwise answer the client directly, from the wrong
  address).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from appliance.model import Affinity, Backend, IPAddress, Service

TABLE = "raftlb"
DIGEST_PREFIX = "raftlb ruleset "


@dataclass(frozen=True, slots=True)
class Target:
    address: IPAddress
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Forward:
    """One VIP port and the backends its new connections go to (empty: reject)."""

    vip: IPAddress
    protocol: str  # "tcp" or "udp"
    port: int
    targets: tuple[Target, ...]
    affinity: bool = False
    service: str = ""


Healthy = Callable[[str, Backend], bool]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Firewall:
    """The appliance's own ports: Raft only from the peers, the API only from the peers and
    `api_clients` (None: from anywhere). Loopback is always allowed."""

    raft_port: int
    api_port: int
    peers: tuple[IPAddress, ...]
    api_clients: tuple[Network, ...] | None = None


def forwards(
    services: Iterable[Service], held: Iterable[IPAddress], healthy: Healthy | None = None
) -> list[Forward]:
    """The forwards of the services whose VIP this node holds, in a stable order.

    Backends of the other address family than the VIP are left out (NAT cannot cross
    families), as are those `healthy(service_id, backend)` rejects.
    """
    held_set = set(held)
    out = []
    for service in services:
        if service.address not in held_set:
            continue
        spec = service.spec
        for port in spec.ports:
            targets = tuple(
                Target(b.address, b.port, b.weight)
                for b in port.backends
                if b.address.version == service.address.version
                and (healthy is None or healthy(spec.id, b))
            )
            out.append(
                Forward(
                    vip=service.address,
                    protocol=str(port.protocol),
                    port=port.port,
                    targets=targets,
                    affinity=spec.affinity == Affinity.SOURCE,
                    service=spec.id,
                )
            )
    return sorted(out, key=lambda f: (f.vip.version, int(f.vip), f.protocol, f.port))


def _family(address: IPAddress) -> str:
    return "ip" if address.version == 4 else "ip6"


def _quote(text: str) -> str:
    # nft comments are double-quoted strings without escapes: keep them printable and plain.
    return "".join(c if c.isprintable() and c not in '"\\' else "?" for c in text)[:120]


def _dnat(forward: Forward) -> str:
    family = _family(forward.vip)
    entries = []
    start = 0
    for target in forward.targets:
        end = start + target.weight - 1
        key = str(start) if end == start else f"{start}-{end}"
        entries.append(f"{key} : {target.address} . {target.port}")
        start = end + 1
    if forward.affinity:
        # A fixed seed per VIP: every node picks the same backend for a client.
        seed = zlib.crc32(forward.vip.packed) & 0xFFFFFFFF
        pick = f"jhash {family} saddr mod {start} seed {seed:#x}"
    else:
        pick = f"numgen random mod {start}"
    return f"dnat {family} to {pick} map {{ {', '.join(entries)} }}"


def _match(forward: Forward) -> str:
    return f"{_family(forward.vip)} daddr {forward.vip} {forward.protocol} dport {forward.port}"


def _set(name: str, kind: str, members: Sequence[IPAddress]) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {kind}"]
    if members:
        lines.append(f"\t\telements = {{ {', '.join(str(m) for m in members)} }}")
    return [*lines, "\t}"]


def _firewall(fw: Firewall) -> list[str]:
    peers4 = [str(p) for p in fw.peers if p.version == 4]
    peers6 = [str(p) for p in fw.peers if p.version == 6]
    lines = [
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        '\t\tiif "lo" accept',
    ]
    for port, extra in ((fw.raft_port, None), (fw.api_port, fw.api_clients)):
        if port == fw.api_port and extra is None:
            continue  # the API is open to every client
        allowed4 = peers4 + [str(n) for n in extra or () if n.version == 4]
        allowed6 = peers6 + [str(n) for n in extra or () if n.version == 6]
        if allowed4:
            lines.append(f"\t\ttcp dport {port} ip saddr {{ {', '.join(allowed4)} }} accept")
        if allowed6:
            lines.append(f"\t\ttcp dport {port} ip6 saddr {{ {', '.join(allowed6)} }} accept")
        what = "raft: peers only" if port == fw.raft_port else "api: peers and api.allow"
        lines.append(f'\t\ttcp dport {port} reject with tcp reset comment "{what}"')
    return [*lines, "\t}"]


def render(
    forward_list: Iterable[Forward], table: str = TABLE, firewall: Firewall | None = None
) -> str:
    """The whole table as an `nft -f` file that replaces any previous version atomically."""
    items = list(forward_list)
    vips = sorted({f.vip for f in items}, key=lambda a: (a.version, int(a)))
    v4 = [a for a in vips if a.version == 4]
    v6 = [a for a in vips if a.version == 6]
    body = [
        *_set("vips4", "ipv4_addr", v4),
        *_set("vips6", "ipv6_addr", v6),
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
    ]
    for f in items:
        if f.targets:
            body.append(f'\t\t{_match(f)} {_dnat(f)} comment "{_quote(f.service)}"')
    body += [
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
    ]
    for f in items:
        if not f.targets:
            how = "reject with tcp reset" if f.protocol == "tcp" else "reject"
            body.append(f'\t\t{_match(f)} {how} comment "{_quote(f.service)}: no healthy backend"')
    body += [
        "\t\tip daddr @vips4 meta l4proto tcp reject with tcp reset",
        "\t\tip daddr @vips4 reject",
        "\t\tip6 daddr @vips6 meta l4proto tcp reject with tcp reset",
        "\t\tip6 daddr @vips6 reject",
        "\t}",
        *(_firewall(firewall) if firewall is not None else []),
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        "\t\tct status dnat ct original ip daddr @vips4 masquerade",
        "\t\tct status dnat ct original ip6 daddr @vips6 masquerade",
        "\t}",
    ]
    digest = hashlib.sha256("\n".join(body).encode()).hexdigest()[:16]
    return (
        "\n".join(
            [
                # nft 1.0.6 has no `destroy`: declare (a no-op if it exists), delete, then define.
                f"table inet {table}",
                f"delete table inet {table}",
                f"table inet {table} {{",
                # What is loaded, for a restarted agent to see it need not reload the same rules.
                f'\tcomment "{DIGEST_PREFIX}{digest}"',
                *body,
                "}",
            ]
        )
        + "\n"
    )


def digest_of(text: str) -> str | None:
    """The digest in a rendered or listed (`nft list table`) table, if any."""
    found = re.search(rf'comment "{DIGEST_PREFIX}([0-9a-f]{{16}})"', text)
    return found.group(1) if found else None


def removal(table: str = TABLE) -> str:
    """An `nft -f` file that removes the table whether or not it exists."""
    return f"table inet {table}\ndelete table inet {table}\n"
