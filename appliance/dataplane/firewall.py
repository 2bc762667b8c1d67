"""The appliance's own firewall (pure): who may reach its Raft, heartbeat and API ports."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from appliance.model import IPAddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Firewall:
    """The appliance's own ports: Raft only from the peers, the API only from the peers and
    `api_clients` (None: from anywhere). Loopback is always allowed."""

    raft_port: int
    api_port: int
    peers: tuple[IPAddress, ...]
    api_clients: tuple[Network, ...] | None = None


def firewall_lines(fw: Firewall) -> list[str]:
    """The input chain of the main table."""
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
        if port == fw.raft_port:
            # The lease heartbeats (appliance/heartbeats.py): authenticated, but nobody
            # else's business.
            if peers4:
                lines.append(f"\t\tudp dport {port} ip saddr {{ {', '.join(peers4)} }} accept")
            if peers6:
                lines.append(f"\t\tudp dport {port} ip6 saddr {{ {', '.join(peers6)} }} accept")
            lines.append(f'\t\tudp dport {port} drop comment "lease heartbeats: peers only"')
    return [*lines, "\t}"]
