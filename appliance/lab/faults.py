"""Faults beyond the crash methods: one-way packet loss between lab hosts.

`one_way_loss(lab, at, source)` makes `at` drop every packet from `source` (both families),
in a table of its own in `at`'s namespace (the agent's tables are raftlb*, never touched), so
`source` still hears `at` while `at` no longer hears `source`. Over TCP (the Raft links) that
soon starves the link both ways (unacknowledged data), but at any moment one side still hears
the other: the partial partition that sets off election storms without PreVote.
"""

from __future__ import annotations

from appliance.lab import LabError
from appliance.lab.netlab import NetLab

TABLE = "rlblab_loss"


def one_way_loss(lab: NetLab, at: str, source: str, on: bool = True) -> None:
    """`at` stops hearing `source` (on) or hears it again (off; idempotent)."""
    if not on:
        lab.exec(at, ["nft", "delete", "table", "inet", TABLE], capture_output=True)
        return
    host = lab.plan.host(source)
    ruleset = (
        f"table inet {TABLE} {{\n"
        "  chain input {\n"
        "    type filter hook prerouting priority -300; policy accept;\n"
        f"    ip saddr {host.ipv4} drop\n"
        f"    ip6 saddr {host.ipv6} drop\n"
        "  }\n"
        "}\n"
    )
    done = lab.exec(at, ["nft", "-f", "-"], input=ruleset, capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"one-way loss {source} -> {at} not set: {done.stderr.strip()}")
