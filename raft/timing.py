"""Timing profiles: Raft timeouts chosen together, so they cannot be combined into nonsense.

`fast` is for a LAN of responsive machines: a follower that hears no heartbeat for 0.15-0.3 s
starts an election. `safe` (1-2 s) is for slow or lossy networks and busy VMs. Each profile also
holds the quorum-lease figures that depend on those timeouts (renewal period, lease length, see
raft/ownership.py), and `problems` checks them against the timeouts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TimingProfile:
    name: str
    raft_min_timeout: float
    raft_max_timeout: float
    append_entries_period: float
    auto_tick_period: float
    leader_fallback_timeout: float
    connection_timeout: float
    connection_retry_time: float
    # How often each agent commits its member report (API URL, version, liveness for humans).
    report_period: float
    # Quorum leases (raft/ownership.py): each node commits a renewal every renew_period and
    # holds its VIPs for `lease` after the send time of its last committed renewal.
    renew_period: float = 0.1
    lease: float = 0.75
    drift: float = 0.05  # clock rate difference tolerated between nodes
    margin: float = 0.05
    # Which leases decide who answers: "promise" (raft/promises.py: peers' promises carried
    # by direct heartbeats, failover after promise_window) or "commit" (raft/ownership.py:
    # committed renewals, failover after dead_after, which must outlast an election).
    leases: str = "promise"
    # 0.25 s: owner faults fail over in ~0.3 s. It holds at 5,000 services because the
    # heartbeats live in a real-time helper process (appliance/heartbeat_helper.py) and the
    # announcer reads the lease it keeps (appliance/lease_cell.py). It was 0.4 s while one-way
    # loss set off elections at 0.25 s: that was PreVote's gate racing pysyncobj's own
    # election check (raft/prevote.py, "Holding pysyncobj's election back").
    promise_window: float = 0.25
    heartbeat_period: float = 0.02
    # A peer whose renewals have not committed for this long is promised nothing more: it no
    # longer takes part in Raft (it would not hear of its VIPs moving).
    raft_grace: float = 1.5

    @property
    def warmup(self) -> float:
        """How long a node back from a restart (or a gap) renews before it gets VIPs from
        other nodes: it loads its state and perhaps the leader's snapshot first, which
        stalls it for a second or two at thousands of services."""
        return max(5.0, 5 * self.dead_after)

    @property
    def dead_after(self) -> float:
        """How long the leader waits without a renewal before reassigning a node's VIPs."""
        return self.lease * (1 + self.drift) + self.margin

    def problems(self) -> list[str]:
        """Why this combination is unsafe or cannot work; empty when it is fine."""
        out = []
        if self.raft_min_timeout <= 3 * self.append_entries_period:
            out.append(
                f"raft_min_timeout {self.raft_min_timeout} must exceed 3 x append_entries_period "
                f"{self.append_entries_period} (else followers start elections between heartbeats)"
            )
        if self.raft_max_timeout <= self.raft_min_timeout:
            out.append("raft_max_timeout must exceed raft_min_timeout")
        if self.leader_fallback_timeout > self.raft_max_timeout * 2:
            out.append(
                f"leader_fallback_timeout {self.leader_fallback_timeout} is long: a cut-off leader "
                "would believe it leads while another is elected"
            )
        if self.auto_tick_period > self.append_entries_period:
            out.append("auto_tick_period must not exceed append_entries_period")
        # A leader crash stops all commits for up to an election; every lease must survive it
        # plus a renewal period and a heartbeat, or one leader crash drops every VIP.
        survive = self.raft_max_timeout + self.renew_period + self.append_entries_period
        if self.lease <= survive:
            out.append(
                f"lease {self.lease} must exceed raft_max_timeout + renew_period + "
                f"append_entries_period = {survive:g} (or a leader crash drops every VIP)"
            )
        if self.leases not in ("promise", "commit"):
            out.append(f"leases {self.leases!r} must be promise or commit")
        if self.heartbeat_period * 4 > self.promise_window:
            out.append(
                f"heartbeat_period {self.heartbeat_period} must be at most promise_window/4 "
                f"{self.promise_window / 4:g} (else one late heartbeat ends a lease)"
            )
        if self.raft_grace <= self.raft_max_timeout + 2 * self.renew_period:
            out.append(
                f"raft_grace {self.raft_grace} must exceed an election and two renewals "
                f"({self.raft_max_timeout + 2 * self.renew_period:g}s)"
            )
        if self.renew_period * 3 > self.lease:
            out.append(f"renew_period {self.renew_period} must be at most lease/3")
        if not 0 <= self.drift < 0.5 or self.margin < 0:
            out.append("drift must be in [0, 0.5) and margin >= 0")
        return out

    def syncobj_kwargs(self) -> dict[str, Any]:
        """The SyncObjConf settings this profile stands for."""
        return {
            "raftMinTimeout": self.raft_min_timeout,
            "raftMaxTimeout": self.raft_max_timeout,
            "appendEntriesPeriod": self.append_entries_period,
            "autoTickPeriod": self.auto_tick_period,
            "leaderFallbackTimeout": self.leader_fallback_timeout,
            "connectionTimeout": self.connection_timeout,
            "connectionRetryTime": self.connection_retry_time,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, TimingProfile] = {
    "fast": TimingProfile(
        name="fast",
        raft_min_timeout=0.15,
        raft_max_timeout=0.3,
        append_entries_period=0.04,
        auto_tick_period=0.01,
        leader_fallback_timeout=0.3,
        connection_timeout=1.0,
        connection_retry_time=0.2,
        report_period=2.0,
    ),
    "safe": TimingProfile(
        name="safe",
        raft_min_timeout=1.0,
        raft_max_timeout=2.0,
        append_entries_period=0.2,
        auto_tick_period=0.02,
        leader_fallback_timeout=2.0,
        connection_timeout=4.0,
        connection_retry_time=1.0,
        report_period=5.0,
        renew_period=0.5,
        lease=4.0,
        promise_window=1.5,
        heartbeat_period=0.1,
        raft_grace=6.0,
    ),
}
