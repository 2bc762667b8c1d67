"""Agent configuration: one YAML file parsed into a checked `AgentConfig`, or every error at once.

Errors name the field (dotted path) and the value. What the config needs from the host (the Raft
password, API token and TLS files; the data interface and its subnets) is checked by
`check_host`, which both `raftlb config check` and the agent run, so the agent refuses to start
with a missing or weak Raft password, or a layer-2 pool off its data interface's segment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from announce.bfd import BIRD
from announce.interfaces import InterfaceError, interface_networks
from appliance.dataplane.firewall import Firewall
from appliance.documents import DocumentError, decode, load_yaml
from appliance.model import AnnounceMode, IPAddress, Name, Pool, ServiceSpec, field_errors
from appliance.secretfile import SecretError, read_secret
from raft.timing import PROFILES, TimingProfile

MIN_SECRET_LENGTH = 16


def _check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port must be 1-65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{value!r}: unbalanced brackets")
        ipaddress.IPv6Address(host[1:-1])
    elif ":" in host:
        raise ValueError(f"{value!r}: write IPv6 addresses as [addr]:port")
    return value


HostPort = Annotated[str, AfterValidator(_check_host_port)]


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PeerConfig(_Strict):
    id: Name
    address: HostPort


class RaftConfig(_Strict):
    address: HostPort = Field(description="host:port the other nodes reach this node's Raft at")
    bind: HostPort | None = Field(default=None, description="listen address if not `address`")
    peers: list[PeerConfig] = Field(min_length=1, description="every member, this node included")
    password_file: Path = Field(description="shared secret; the Raft port accepts pickles")
    log_compaction_entries: int = Field(
        default=5000,
        ge=10,
        le=10_000_000,
        description="journal entries after which the state is dumped and the journal cut",
    )
    log_compaction_interval: float = Field(
        default=300.0,
        ge=10,
        le=86_400,
        description=(
            "seconds: each node compacts only in its own slot of every interval (node i of n "
            "from i*interval/n), so no two compact at once; and at least once per interval"
        ),
    )


class TlsConfig(_Strict):
    cert_file: Path
    key_file: Path


class ApiConfig(_Strict):
    listen: HostPort
    token_file: Path
    tls: TlsConfig | None = None
    url: str | None = Field(default=None, description="URL other nodes and the CLI use")
    write_timeout: float = Field(default=5.0, ge=0.2, le=120, description="seconds")
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = Field(
        default=None,
        description="networks whose clients may reach the API besides the peers (with "
        "forward: nftables); omitted: every client",
    )

    def public_url(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        host, port = split_host_port(self.listen)
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{port}"


class L2Config(_Strict):
    """`announce: l2`: when gratuitous ARP / unsolicited NA go out for a held VIP."""

    burst: int = Field(default=3, ge=1, le=20, description="copies sent at takeover")
    repeats: list[Annotated[float, Field(gt=0, le=60)]] = Field(
        default_factory=lambda: [0.5, 1.0, 2.0, 4.0],
        max_length=10,
        description="seconds after the takeover at which one more copy goes out",
    )
    refresh_interval: float | None = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="then one copy every this many seconds, for switches and routers that "
        "keep stale entries; null turns the refresh off",
    )

    @field_validator("repeats")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"repeats must increase, got {value}")
        return value


class BfdConfig(_Strict):
    """BFD with the BGP peers (a BIRD beside exabgp): a silent node loses its paths after
    interval x multiplier instead of the hold time. The router must run BFD too."""

    interval_ms: int = Field(default=100, ge=10, le=60000, description="both ways, ms")
    multiplier: int = Field(default=3, ge=2, le=255, description="missed packets: down")


class BgpPeerConfig(_Strict):
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    asn: int = Field(ge=1, le=4294967295)
    hold_time: int = Field(default=3, description="seconds: 0 (no keepalives) or 3 and more")
    passive: bool = Field(
        default=False, description="refused: the agent's exabgp listens on no port"
    )
    bfd: bool = Field(default=True, description="with bgp.bfd: a BFD session with this peer")
    local_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = Field(
        default=None,
        description="source of this session; default: bgp.local_address or "
        "bgp.local_address6, whichever is of the peer's family",
    )

    @field_validator("hold_time")
    @classmethod
    def _hold(cls, value: int) -> int:
        if value != 0 and not 3 <= value <= 65535:
            raise ValueError(f"hold_time must be 0 or between 3 and 65535, got {value}")
        return value

    @field_validator("passive")
    @classmethod
    def _active(cls, value: bool) -> bool:
        # exabgp would wait for the router to connect on a port it was never told to open:
        # the session could never establish, and nothing would say why.
        if value:
            raise ValueError(
                "passive sessions are not supported (exabgp listens on no port here): let "
                "the agent connect, and set the router's side passive if it must wait"
            )
        return value

    @model_validator(mode="after")
    def _same_family(self) -> BgpPeerConfig:
        if self.local_address is not None and self.local_address.version != self.address.version:
            raise ValueError(
                f"local_address {self.local_address} is not of the family of address "
                f"{self.address}: a session's two ends are of one family"
            )
        return self


class BgpConfig(_Strict):
    """`announce: bgp`: this node's BGP sessions (one exabgp per agent)."""

    asn: int = Field(ge=1, le=4294967295)
    peers: list[BgpPeerConfig] = Field(min_length=1)
    router_id: ipaddress.IPv4Address | None = Field(
        default=None, description="default: the IPv4 address of raft.address"
    )
    local_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = Field(
        default=None, description="source of the sessions; default: the router id"
    )
    local_address6: ipaddress.IPv6Address | None = Field(
        default=None,
        description="source of the sessions with IPv6 peers (when local_address is IPv4)",
    )
    next_hop4: ipaddress.IPv4Address | None = Field(
        default=None, description="next hop of IPv4 VIPs; default: the local address"
    )
    bfd: BfdConfig | None = Field(default=None, description="null: no BFD (the hold time)")
    next_hop6: ipaddress.IPv6Address | None = Field(
        default=None,
        description="next hop of IPv6 VIPs; default: the IPv6 local address; without either, "
        "IPv6 VIPs are not announced",
    )

    def local4(self, router_id: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
        """The default source of sessions with IPv4 peers."""
        if isinstance(self.local_address, ipaddress.IPv4Address):
            return self.local_address
        return router_id

    def local6(self) -> ipaddress.IPv6Address | None:
        """The default source of sessions with IPv6 peers (None: there is none)."""
        if isinstance(self.local_address, ipaddress.IPv6Address):
            return self.local_address
        return self.local_address6

    def peer_local(self, peer: BgpPeerConfig, router_id: ipaddress.IPv4Address) -> IPAddress | None:
        if peer.local_address is not None:
            return peer.local_address
        return self.local4(router_id) if peer.address.version == 4 else self.local6()

    def ibgp(self) -> bool:
        """Whether some session is iBGP (the only kind that carries LOCAL_PREF)."""
        return any(p.asn == self.asn for p in self.peers)


class AgentConfig(_Strict):
    """One agent's settings. Build it with `parse_config`/`load_config`, which add the checks
    that span several fields (`cross_checks`)."""

    node_id: Name
    raft: RaftConfig
    data_dir: Path
    api: ApiConfig
    data_interface: str | None = Field(default=None, max_length=15)
    announce: Literal["none", "l2", "bgp", "l2+bgp"] = "none"
    l2: L2Config = Field(default_factory=L2Config)
    bgp: BgpConfig | None = None
    # nftables: held VIPs are forwarded to their backends (the `inet raftlb` table); none: no
    # forwarding (a control-plane-only node, or agents sharing one host in tests).
    forward: Literal["nftables", "none"] = "nftables"
    timing: Literal["fast", "safe"] = "fast"
    # promise: quorum-promise leases over direct heartbeats (raft/promises.py, the default);
    # commit: leases renewed through Raft (raft/ownership.py), slower failover.
    leases: Literal["promise", "commit"] = "promise"
    # avoid: the Raft leader hands its layer-2 VIPs to the other nodes and holds one only when
    # nobody else may, so an owner's death never waits for an election (the leader that moves
    # its VIPs is alive); share: the leader holds its share like any node (more capacity).
    vips_on_leader: Literal["avoid", "share"] = "avoid"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    pools: list[Pool] = Field(default_factory=list)
    services: list[ServiceSpec] = Field(default_factory=list)

    @property
    def announces_l2(self) -> bool:
        return self.announce in ("l2", "l2+bgp")

    @property
    def announces_bgp(self) -> bool:
        return self.announce in ("bgp", "l2+bgp")

    def timing_profile(self) -> TimingProfile:
        return dataclasses.replace(PROFILES[self.timing], leases=self.leases)

    def peer_map(self) -> dict[str, str]:
        return {p.id: p.address for p in self.raft.peers}


def _err(field: str, value: Any, message: str) -> dict[str, Any]:
    return {"field": field, "value": value, "message": message}


def firewall(config: AgentConfig) -> tuple[Firewall | None, list[str]]:
    """The appliance's own firewall for this config, and why parts of it are left out."""
    notes = []
    peers = []
    for peer in config.raft.peers:
        host, _ = split_host_port(peer.address)
        try:
            peers.append(ipaddress.ip_address(host))
        except ValueError:
            notes.append(f"peer {peer.id} is named by host name {host!r}, not an address")
    if notes:
        return None, [*notes, "the Raft and API ports are left unfiltered: use addresses"]
    _, raft_port = split_host_port(config.raft.bind or config.raft.address)
    _, api_port = split_host_port(config.api.listen)
    allow = tuple(config.api.allow) if config.api.allow is not None else None
    if allow is None:
        notes.append("the API is reachable from every client: set api.allow to restrict it")
    return Firewall(raft_port, api_port, tuple(peers), allow), notes


def cross_checks(config: AgentConfig) -> list[dict[str, Any]]:
    """Problems that involve several fields, each named by its field and value, all at once."""
    errors = []
    for attr in ("id", "address"):
        seen: set[str] = set()
        for i, peer in enumerate(config.raft.peers):
            value = getattr(peer, attr)
            if value in seen:
                errors.append(
                    _err(f"raft.peers.{i}.{attr}", value, f"peer {attr} {value!r} appears twice")
                )
            seen.add(value)
    me = [p for p in config.raft.peers if p.id == config.node_id]
    if not me:
        errors.append(
            _err("node_id", config.node_id, f"node_id {config.node_id!r} is not among raft.peers")
        )
    elif me[0].address != config.raft.address:
        errors.append(
            _err(
                "raft.address",
                config.raft.address,
                f"raft.address {config.raft.address!r} differs from this node's peer entry "
                f"{me[0].address!r}",
            )
        )
    seen_pools: set[str] = set()
    for i, pool in enumerate(config.pools):
        if pool.name in seen_pools:
            errors.append(_err(f"pools.{i}.name", pool.name, f"pool {pool.name!r} appears twice"))
        seen_pools.add(pool.name)
        for j, text in enumerate(pool.addresses):
            block = Pool(name=pool.name, addresses=[text])
            for other in config.pools[:i]:
                overlap = block.overlaps(other)
                if overlap:
                    errors.append(
                        _err(f"pools.{i}.addresses.{j}", text, f"pool {pool.name!r}: {overlap}")
                    )
    seen_ids: set[str] = set()
    for i, service in enumerate(config.services):
        if service.id in seen_ids:
            errors.append(
                _err(f"services.{i}.id", service.id, f"service id {service.id!r} appears twice")
            )
        seen_ids.add(service.id)
    if config.announces_bgp and config.bgp is None:
        errors.append(_err("bgp", None, f"announce: {config.announce} needs a bgp section"))
    if config.bgp is not None and config.bgp.router_id is None:
        host, _ = split_host_port(config.raft.address)
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            errors.append(
                _err("bgp.router_id", None, "set it: raft.address is not an IPv4 address")
            )
    if config.bgp is not None:
        errors += _bgp_checks(config.bgp, config.raft.address)
    if config.announces_l2 and config.data_interface is None:
        errors.append(
            _err("data_interface", None, "announce: l2 needs the data interface to answer on")
        )
    for problem in config.timing_profile().problems():
        errors.append(_err("timing", config.timing, problem))
    return errors


def _bgp_checks(bgp: BgpConfig, raft_address: str) -> list[dict[str, Any]]:
    """What exabgp would refuse at start (and then restart in a loop, announcing nothing for
    any peer): a session whose source is not of its peer's family."""
    errors: list[dict[str, Any]] = []
    host, _ = split_host_port(raft_address)
    try:
        router_id = bgp.router_id or ipaddress.IPv4Address(host)
    except ValueError:
        return errors  # said above: no router id
    if bgp.bfd is not None and not BIRD.exists():
        errors.append(
            _err(
                "bgp.bfd", bgp.bfd.model_dump(), f"BFD runs in BIRD ({BIRD}): apt-get install bird2"
            )
        )
    seen: set[str] = set()
    for i, peer in enumerate(bgp.peers):
        if str(peer.address) in seen:
            errors.append(
                _err(f"bgp.peers.{i}.address", str(peer.address), "this peer is listed twice")
            )
        seen.add(str(peer.address))
        if bgp.peer_local(peer, router_id) is None:
            errors.append(
                _err(
                    f"bgp.peers.{i}.address",
                    str(peer.address),
                    "an IPv6 peer needs an IPv6 source: set bgp.local_address6 or this "
                    "peer's local_address",
                )
            )
    return errors


class ConfigError(Exception):
    """Every problem found in a config, each as {field, value, message}."""

    def __init__(self, path: Path | str, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{path}: {len(errors)} error(s)")
        self.path = path
        self.errors = errors


def parse_config(data: Any, source: Path | str = "<config>") -> AgentConfig:
    """Validate already-loaded YAML data."""
    if not isinstance(data, dict):
        raise ConfigError(
            source,
            [{"field": "(root)", "value": type(data).__name__, "message": "must be a mapping"}],
        )
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, field_errors(exc)) from None
    errors = cross_checks(config)
    if errors:
        raise ConfigError(source, errors)
    return config


def load_config(path: Path) -> AgentConfig:
    """Read and validate a YAML config file; raise ConfigError listing every problem."""
    try:
        data = load_yaml(decode(path.read_bytes(), "the config file"))
    except OSError as exc:
        raise ConfigError(
            path, [{"field": "(file)", "value": str(path), "message": exc.strerror or str(exc)}]
        ) from None
    except DocumentError as exc:
        raise ConfigError(
            path, [{"field": "(file)", "value": str(path), "message": str(exc)}]
        ) from None
    config = parse_config(data, path)
    return config


def segment_errors(
    pools: list[Pool], networks: list[Any], interface: str, field_prefix: str = "pools"
) -> list[dict[str, Any]]:
    """Layer-2 pool blocks off the data interface's subnets.

    A node answers ARP/NS for a VIP with its own MAC, so the VIP must sit on the node's segment:
    elsewhere no neighbour would ever ask this node for it.
    """
    errors = []
    subnets = ", ".join(str(n) for n in networks) or "no address"
    for i, pool in enumerate(pools):
        if pool.announce != AnnounceMode.L2:
            continue
        prefix = f"{field_prefix}.{i}." if field_prefix else ""
        for j, text in pool.outside(networks):
            errors.append(
                _err(
                    f"{prefix}addresses.{j}",
                    text,
                    f"layer-2 pool {pool.name!r}: {text} is outside the subnets of data "
                    f"interface {interface} ({subnets})",
                )
            )
    return errors


def data_networks(config: AgentConfig) -> list[Any] | None:
    """The data interface's subnets when this node announces on layer 2, else None."""
    if not config.announces_l2 or config.data_interface is None:
        return None
    return list(interface_networks(config.data_interface))


def pool_checker(config: AgentConfig) -> Any:
    """For the API: a check of new pools against the data interface as it is now (addresses
    can change while the agent runs), or None when this node does not announce on layer 2."""
    interface = config.data_interface
    if not config.announces_l2 or interface is None:
        return None

    def check(pools: list[Pool], prefix: str) -> list[dict[str, Any]]:
        try:
            networks = list(interface_networks(interface))
        except InterfaceError as exc:
            return [_err("data_interface", interface, str(exc))]
        return segment_errors(pools, networks, interface, prefix)

    return check


def check_host(config: AgentConfig) -> list[dict[str, Any]]:
    """What the config needs from this host: secret files (present, strong), TLS files, and
    for `announce: l2` a data interface whose subnets hold every static layer-2 pool."""
    errors = check_files(config)
    try:
        networks = data_networks(config)
    except InterfaceError as exc:
        return [*errors, _err("data_interface", config.data_interface, str(exc))]
    if networks is not None and config.data_interface is not None:
        errors += segment_errors(config.pools, networks, config.data_interface)
    return errors


def check_files(config: AgentConfig) -> list[dict[str, Any]]:
    """Problems with the files the config names: missing, unreadable, empty or weak secrets."""
    errors: list[dict[str, Any]] = []
    secrets = [
        ("raft.password_file", config.raft.password_file),
        ("api.token_file", config.api.token_file),
    ]
    for field, path in secrets:
        try:
            read_secret(path, MIN_SECRET_LENGTH)
        except SecretError as exc:
            errors.append({"field": field, "value": str(path), "message": f"the file {exc.reason}"})
    if config.api.tls is not None:
        for field, path in (
            ("api.tls.cert_file", config.api.tls.cert_file),
            ("api.tls.key_file", config.api.tls.key_file),
        ):
            if not path.is_file():
                errors.append({"field": field, "value": str(path), "message": "file not found"})
    return errors


def summary(config: AgentConfig) -> list[str]:
    """Human lines describing a valid config, for `raftlb config check`."""
    timing = config.timing_profile()
    return [
        f"node {config.node_id}: raft {config.raft.address}, "
        f"{len(config.raft.peers)} member(s) ({', '.join(p.id for p in config.raft.peers)})",
        f"api {config.api.listen} ({'TLS' if config.api.tls else 'plain HTTP'}), "
        f"data dir {config.data_dir}",
        f"announce {config.announce}"
        + (f" on {config.data_interface}" if config.announces_l2 else "")
        + (f", BGP AS {config.bgp.asn} to {len(config.bgp.peers)} peer(s)" if config.bgp else "")
        + f", forward {config.forward}, timing {timing.name} "
        f"(election {timing.raft_min_timeout:g}-{timing.raft_max_timeout:g}s)",
        f"{len(config.pools)} static pool(s), {len(config.services)} static service(s)",
    ]
