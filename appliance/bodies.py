"""The API's answers as models: `/v1/status`, `/v1/vips`, a service's health and `/v1/apply`.

One definition serves four readers: the server builds its answers from these models, the client
parses answers into them, the CLI renders them, and the OpenAPI document is generated from
them. Answers tolerate fields they do not know (`extra="ignore"`): a CLI one release older than
the agent it asks keeps working when the agent reports something new.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.model import ObjectId, Pool, Service, ServiceSpec

_Count = Field(ge=0)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RaftInfo(_Answer):
    """This node's Raft: role, term, indexes and connections to its peers."""

    node: str
    role: str = Field(description="leader, follower, candidate or unknown")
    leader: str | None
    term: int = _Count
    commit_index: int = _Count
    last_applied: int = _Count
    has_quorum: bool
    ready: bool = Field(description="the journal is replayed and a leader is known")
    connected: dict[str, bool] = Field(description="peers this node has a connection to")


class DataplaneInfo(_Answer):
    """The node's forwarding: nftables and how loading its rules went, or none."""

    forward: Literal["nftables", "none"]
    sysctl_problems: list[str] = Field(default_factory=list)
    vips: int = Field(default=0, ge=0)
    loaded: bool = False
    loads: int = Field(default=0, ge=0, description="full loads of the table")
    deltas: int = Field(default=0, ge=0, description="changes applied by element")
    errors: int = Field(default=0, ge=0)
    last_error: str | None = None
    last_update_ms: dict[str, float] = Field(
        default_factory=dict, description="the last update's duration, by kind"
    )


class BgpSession(_Answer):
    """One BGP session as this node's exabgp sees it."""

    state: str = Field(description="up, down, connected...")
    up_for: float | None = Field(description="seconds since it came up; null while not up")
    routes_sent: int = Field(ge=0, description="routes announced on it now")
    refreshes: int = Field(
        ge=0,
        description="route refresh requests the router sent (it re-read the routes: after "
        "its restart or a policy change); BGP never says what a router accepted",
    )


class BfdSession(_Answer):
    status: str = Field(description="up, down, init, admin-down or unknown (not read yet)")
    up_for: float | None = None
    down_for: float | None = None


class BfdInfo(_Answer):
    """The BFD daemon beside exabgp (bgp.bfd, a BIRD): its sessions with the BGP peers."""

    running: bool
    restarts: int = Field(ge=0)
    peers: dict[str, BfdSession]


class BgpInfo(_Answer):
    """exabgp, its sessions and the routes it was given."""

    running: bool
    announcing: bool = Field(description="exabgp's API is connected: routes reach it")
    peers: dict[str, str] = Field(description="session state by peer address")
    sessions: dict[str, BgpSession] = Field(
        default_factory=dict, description="each session's details, by peer address"
    )
    routes: list[str]
    restarts: int = _Count
    errors: int = Field(ge=0, description="commands exabgp refused")
    bfd: BfdInfo | None = Field(default=None, description="null: no BFD (bgp.bfd unset)")


class L2Info(_Answer):
    """The layer-2 announcer: its interface, the VIPs it answers for now and its counters since
    the agent started."""

    interface: str
    held: int = _Count
    conflicts: int = Field(ge=0, description="another MAC announced or probed a VIP held here")
    stale_refusals: int = Field(ge=0, description="frames not sent because the lease had ended")
    send_errors: int = _Count


class Status(_Answer):
    """`GET /v1/status`: this node's view of the cluster, its data plane and announcers."""

    node: str
    version: str
    raft: RaftInfo
    leader_api_url: str | None
    members: int = _Count
    members_connected: int = _Count
    pools: int = _Count
    services: int = _Count
    allocations: int = _Count
    vips: int = _Count
    revision: int = _Count
    apply_backlog: int = Field(
        ge=0, description="committed entries not yet applied here: grows when applying lags"
    )
    lease_ages: dict[str, float | None] = Field(
        description="seconds since this node saw each member's lease renewal change"
    )
    drained: list[str]
    dataplane: DataplaneInfo
    bgp: BgpInfo | None = Field(description="null: this node does not announce by BGP")
    l2: L2Info | None = Field(description="null: this node does not announce by layer 2")


class BackendCounts(_Answer):
    healthy: int = _Count
    total: int = _Count


class VipEntry(_Answer):
    """One allocated address (`GET /v1/vips`): its pool, owners and ports, and who holds it."""

    address: str
    pool: str
    announce: str | None = Field(description="the pool's mode, l2 or bgp (null: pool gone)")
    owners: list[str] = Field(description="allocation owners: services and plain allocations")
    services: list[str]
    sharing_key: str | None
    ports: list[str] = Field(description="port/protocol, e.g. 80/tcp")
    node: str | None = Field(description="the owner (l2); null for bgp, or while moving")
    epoch: int | None = Field(description="raised on every change of owner")
    since: float | None = Field(description="unix time of the last change of owner")
    releasing: str | None = Field(description="the old owner, while a planned move waits for it")
    previous: str | None
    reason: str | None = Field(description="why it last changed owner (dead, drain, ...)")
    dead_for: float | None = Field(
        description="for reason dead: seconds the leader had not seen the old owner renew"
    )
    bgp_announced_here: bool | None = Field(
        description="bgp VIPs: the answering node announces it (null: not a bgp VIP)"
    )
    backends: BackendCounts | None = Field(
        description="backends answering health checks on the answering node (null: not checked)"
    )


class BackendHealth(_Answer):
    address: str
    port: int
    healthy: bool
    last_check: float | None = None
    reason: str = ""
    since: float | None = None
    checks: int = Field(default=0, ge=0)


class ServiceHealth(_Answer):
    """The answering node's view of a service's backends (nodes with a data plane)."""

    node: str
    backends: list[BackendHealth]


class ServiceWithHealth(Service):
    """`GET /v1/services/{id}`: the service, and its backends' health where it is checked."""

    health: ServiceHealth | None = None


class ApplyBody(BaseModel):
    """`POST /v1/apply`: pools, then services, then deletions, all or nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pools: list[Pool] = Field(default_factory=list)
    services: list[ServiceSpec] = Field(default_factory=list)
    delete_services: list[ObjectId] = Field(default_factory=list)


class PoolApplied(_Answer):
    pool: Pool


class ServiceApplied(_Answer):
    service: Service


class ServiceDeleted(_Answer):
    deleted: str
    existed: bool = Field(default=True, description="false: it was already gone (a retry)")


class ApplyAnswer(_Answer):
    """One result per change, in the order of the body: pools, services, deletions."""

    results: list[PoolApplied | ServiceApplied | ServiceDeleted]

    def pools(self) -> list[Pool]:
        return [r.pool for r in self.results if isinstance(r, PoolApplied)]

    def services(self) -> list[Service]:
        return [r.service for r in self.results if isinstance(r, ServiceApplied)]
