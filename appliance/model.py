"""The vocabulary of raftlb: pools, services, ports, backends, allocations, nodes, assignments.

Every value that crosses a process boundary (config file, HTTP body, Raft command, Kubernetes
translation) is parsed into one of these models once, at the edge. The models are frozen and
round-trip through JSON (`model_dump(mode="json")` / `model_validate`). Validation errors name
the field and the value: see `field_errors`.

This module imports nothing of the project so that every package may use it.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import WithJsonSchema

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=1 << 16)
def address_text(address: IPAddress) -> str:
    """`str(address)`, remembered: the standard library compresses an IPv6 address's text anew
    each time (~25 us), and views and reconcile passes ask it for thousands of VIPs."""
    return str(address)


@functools.lru_cache(maxsize=1 << 16)
def parse_address(text: str) -> IPAddress:
    """An address from its text; ValueError for anything else, a zoned address included."""
    # Remembered: a listing of 5,000 services holds 50,000 backend addresses, mostly the same
    # few node addresses, and pydantic's IPvAnyAddress parsed each anew (trying IPv4 first and
    # raising for every IPv6 one): most of a sync's cold start. Addresses are immutable.
    if "%" in text:
        # A zone id makes "fe80::1%a" and "fe80::1%b" different addresses (one VIP, two
        # owners) and carries any text (spaces, newlines) into logs, nft and exabgp commands.
        raise ValueError("an address with a zone id (addr%zone) is not accepted")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("value is not a valid IPv4 or IPv6 address") from None


def _address(value: Any) -> IPAddress:
    """An address given as text (or, from Python, as an address): nothing else. pydantic's
    IPvAnyAddress took `true` as 0.0.0.1 and `0` as 0.0.0.0."""
    if isinstance(value, str):
        return parse_address(value)
    if isinstance(value, ipaddress.IPv4Address):
        return value
    if isinstance(value, ipaddress.IPv6Address):
        if value.scope_id is not None:
            return parse_address(str(value))  # refused, with the text's message
        return value
    raise ValueError("an address must be a string such as 192.0.2.1 or 2001:db8::1")


# The union as a pydantic field type: one clear error for a bad value instead of one per member
# of the union; serialised to JSON as its text, kept an address object in Python mode.
AnyIP = Annotated[
    IPAddress,
    PlainValidator(_address),
    PlainSerializer(address_text, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "ipvanyaddress"}),
]

# What a VIP (and every address of a pool) may not be: addresses the kernel or the network treat
# as something else than one host's unicast address. Handed out, they were announced, put in
# nft rules and written to Kubernetes as if they were. Loopback is fine for a backend (with
# `forward: none` a local proxy may be the backend that health checks probe), not for a VIP.
_LOOPBACK = "a loopback address"
_SPECIAL = tuple(
    (ipaddress.ip_network(net), kind)
    for net, kind in (
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("127.0.0.0/8", _LOOPBACK),
        ("169.254.0.0/16", "a link-local address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved or the broadcast address"),
        ("::/128", "the unspecified address"),
        ("::1/128", _LOOPBACK),
        ("::ffff:0:0/96", "an IPv4-mapped IPv6 address (use the IPv4 address)"),
        ("::/96", "an IPv4-compatible IPv6 address (deprecated)"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address (deprecated)"),
        ("ff00::/8", "a multicast address"),
    )
)


def not_unicast(
    first: IPAddress, last: IPAddress | None = None, backend: bool = False
) -> str | None:
    """What is wrong with an address (or the block first..last) as a VIP or a backend, None
    when nothing is."""
    last = first if last is None else last
    for net, kind in _SPECIAL:
        if backend and kind == _LOOPBACK:
            continue
        if net.version == first.version and int(first) <= int(net[-1]) and int(net[0]) <= int(last):
            return kind
    return None


@functools.lru_cache(maxsize=1 << 16)
def _unicast(address: IPAddress, backend: bool) -> IPAddress:
    kind = not_unicast(address, backend=backend)
    if kind is not None:
        role = "a backend" if backend else "a VIP"
        raise ValueError(f"{address} is {kind}: {role} must be a unicast address of a host")
    return address


VipIP = Annotated[AnyIP, AfterValidator(lambda a: _unicast(a, False))]
BackendIP = Annotated[AnyIP, AfterValidator(lambda a: _unicast(a, True))]

# A pool or node name: short, DNS-label-like, safe in URLs, file names and nft identifiers.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9_.-]*[a-z0-9])?$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=NAME_PATTERN)]


# A service id or allocation owner, e.g. "prod-k8s/default/web": the cluster name comes first so
# that several Kubernetes clusters can share one appliance cluster without collisions.
def _no_dot_segments(value: str) -> str:
    # HTTP clients and proxies resolve "." and ".." path segments: "a/../b" would reach "b".
    if any(segment in ("", ".", "..") for segment in value.split("/")):
        raise ValueError(f"{value!r} has an empty, '.' or '..' segment")
    return value


OBJECT_ID_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_./:-]*[A-Za-z0-9])?$"
ObjectId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=253, pattern=OBJECT_ID_PATTERN),
    AfterValidator(_no_dot_segments),
]
# Text that reaches logs, terminals and nft comments is printable ASCII: ESC, NUL or a
# right-to-left override in a sharing key or a port name was printed raw by the CLI.
SharingKey = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[!-~]+$")]
# A Kubernetes-style name (port names, node names): letters, digits, '_', '.', '-'.
Label = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$"
    ),
]
# Strict: JSON `true` is no port 1, `"80"` and `80.0` are no ports (pydantic's lax mode took them).
PortNumber = Annotated[int, Field(strict=True, ge=1, le=65535)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnnounceMode(StrEnum):
    """How the owner of a VIP makes it reachable."""

    L2 = "l2"
    BGP = "bgp"


class TransportProtocol(StrEnum):
    """The transport protocol of a port."""

    TCP = "tcp"
    UDP = "udp"


class IPFamily(StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"


class TrafficPolicy(StrEnum):
    """Like Kubernetes' externalTrafficPolicy: `local` only uses nodes that run a pod."""

    CLUSTER = "cluster"
    LOCAL = "local"


class Affinity(StrEnum):
    """How a VIP spreads new connections over its backends.

    `consistent`: by a hash of the client's address and port through a table every node builds
    the same way (appliance/dataplane/consistent.py), so a connection keeps its backend when
    the VIP moves to another node; `random`: per connection, at random; `source`: by the
    client's address alone (every connection of a client on one backend). `none` is the old
    name of `random`, kept for stored services and older clients."""

    CONSISTENT = "consistent"
    RANDOM = "random"
    SOURCE = "source"
    NONE = "none"


class HealthCheckType(StrEnum):
    TCP = "tcp"
    HTTP = "http"
    NONE = "none"


def family_of(address: IPAddress) -> IPFamily:
    return IPFamily.IPV4 if address.version == 4 else IPFamily.IPV6


def address_from_int(version: int) -> type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]:
    """The address class of an IP version: `ip_address(int)` would make ::1 an IPv4 address."""
    return ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address


_RANGE_RE = re.compile(r"^\s*(?P<start>[^\s-]+)\s*-\s*(?P<end>[^\s-]+)\s*$")


def parse_address_block(text: str) -> tuple[IPAddress, IPAddress]:
    """Parse "192.0.2.0/28", "192.0.2.10-192.0.2.20" or a single address into (first, last).

    Raises ValueError with a message naming the text.
    """
    match = _RANGE_RE.match(text)
    try:
        if match:
            start = ipaddress.ip_address(match["start"])
            end = ipaddress.ip_address(match["end"])
        elif "/" in text:
            net = ipaddress.ip_network(text.strip(), strict=True)
            start, end = net[0], net[-1]
        else:
            start = end = ipaddress.ip_address(text.strip())
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR, a range A-B or an address: {exc}") from None
    if start.version != end.version:
        raise ValueError(f"{text!r} mixes IPv4 and IPv6")
    if int(end) < int(start):
        raise ValueError(f"{text!r}: the range ends before it starts")
    return start, end


def _vip_block(text: str) -> tuple[IPAddress, IPAddress]:
    """The addresses of a pool block that may be VIPs: an IPv6 CIDR shorter than /127 without
    its all-zeros address, which routers answer as the subnet-router anycast address (a VIP
    there is unreachable or reaches a router); /127 and /128 are point-to-point or single."""
    first, last = parse_address_block(text)
    if first.version == 6 and "/" in text and int(text.rsplit("/", 1)[1]) < 127:
        return address_from_int(6)(int(first) + 1), last
    return first, last


def _check_block(text: str) -> str:
    if "%" in text:
        raise ValueError(f"{text!r}: an address with a zone id (addr%zone) is not accepted")
    first, last = parse_address_block(text)
    kind = not_unicast(first, last)
    if kind is not None:
        raise ValueError(f"{text!r} holds {kind}: a pool's addresses must be unicast ones")
    return text


# One entry of a pool: checked on its own so an error names the entry ("addresses.2").
AddressBlock = Annotated[str, AfterValidator(_check_block)]


Community = Annotated[str, Field(pattern=r"^\d{1,5}:\d{1,5}$")]
LargeCommunity = Annotated[str, Field(pattern=r"^\d{1,10}:\d{1,10}:\d{1,10}$")]


class BgpAttributes(_Frozen):
    """Path attributes of the routes of a `bgp` pool's VIPs."""

    communities: list[Community] = Field(default_factory=list, max_length=32)
    large_communities: list[LargeCommunity] = Field(default_factory=list, max_length=32)
    local_pref: int | None = Field(strict=True, default=None, ge=0, le=4294967295)
    med: int | None = Field(strict=True, default=None, ge=0, le=4294967295)


class SourceAddress(StrEnum):
    """The source address backends see on a VIP's connections."""

    VIP = "vip"  # moves with the VIP: a connection survives a failover
    NODE = "node"  # the forwarding node's own (masquerade)


class Balancing(_Frozen):
    """How the VIPs of a pool spread connections and which source address backends see. Part
    of the replicated pool, so every node builds the same tables: a change re-hashes the new
    connections of the pool's VIPs (established ones stay where they are)."""

    table_size: int = Field(
        strict=True,
        default=4093,
        description="Slots of a port's consistent-hashing table: a prime from 251 to 65521. "
        "At 4093, removing one backend of up to 12 moves at most ~2% of the flows beyond its "
        "own; keep it above 400 x the most backends a port has",
    )
    seed: int = Field(
        strict=True,
        default=0x72616C62,
        ge=0,
        le=0xFFFFFFFF,
        description="The seed of the kernel's flow hash (jhash): explicit, so every node agrees",
    )
    source: SourceAddress | None = Field(
        default=None,
        description="vip: backends see the VIP as the source, so a connection survives a "
        "failover; node: the forwarding node's own address. Default: vip for l2 pools, node "
        "for bgp pools (replies to the VIP would reach whichever node the router's ECMP picks)",
    )

    @field_validator("table_size")
    @classmethod
    def _prime_size(cls, value: int) -> int:
        check_table_size(value)
        return value


MIN_TABLE_SIZE = 251
MAX_TABLE_SIZE = 65521  # the largest prime below 2**16


def is_prime(n: int) -> bool:
    return n > 1 and all(n % i for i in range(2, math.isqrt(n) + 1))


def check_table_size(size: int) -> None:
    """A consistent-hashing table's size must be a prime in range (ValueError otherwise)."""
    if not (MIN_TABLE_SIZE <= size <= MAX_TABLE_SIZE and is_prime(size)):
        raise ValueError(
            f"table size {size} must be a prime from {MIN_TABLE_SIZE} to {MAX_TABLE_SIZE}"
        )


class Pool(_Frozen):
    """A named set of addresses the appliance hands out as VIPs."""

    name: Name
    addresses: list[AddressBlock] = Field(
        min_length=1,
        description="CIDRs, ranges A-B, or addresses. An IPv6 CIDR shorter than /127 never "
        "hands out its all-zeros address (the subnet-router anycast address, RFC 4291); a "
        "range is taken as written",
    )
    announce: AnnounceMode = AnnounceMode.L2
    default: bool = Field(
        strict=True,
        default=False,
        description="Used when an allocation names no pool (one default per family)",
    )
    avoid_buggy_ips: bool = Field(
        strict=True, default=False, description="Skip IPv4 addresses ending in .0 and .255"
    )
    bgp: BgpAttributes | None = Field(
        default=None, description="Route attributes when announced by BGP"
    )
    balancing: Balancing = Field(default_factory=Balancing)

    def source(self) -> SourceAddress:
        """The source address backends see on this pool's VIPs' connections."""
        if self.balancing.source is not None:
            return self.balancing.source
        return SourceAddress.VIP if self.announce == AnnounceMode.L2 else SourceAddress.NODE

    @field_validator("addresses")
    @classmethod
    def _blocks_parse_and_do_not_overlap(cls, value: list[str]) -> list[str]:
        blocks = [parse_address_block(text) for text in value]
        ordered = sorted(zip(blocks, value, strict=True), key=lambda b: (b[0][0].version, b[0][0]))
        for (prev, prev_text), (cur, cur_text) in itertools.pairwise(ordered):
            if prev[0].version == cur[0].version and int(cur[0]) <= int(prev[1]):
                raise ValueError(f"{prev_text!r} and {cur_text!r} overlap")
        return value

    @field_validator("balancing")
    @classmethod
    def _source_fits_announce(cls, value: Balancing, info: ValidationInfo) -> Balancing:
        if value.source == SourceAddress.VIP and info.data.get("announce") == AnnounceMode.BGP:
            # Measured (raftlb lab bench continuity --mode bgp --source vip): no connection
            # even opens, the SYN-ACKs reaching nodes that never saw the SYN.
            raise ValueError(
                "source vip needs announce l2: in a bgp pool the backends' replies to a VIP go "
                "to whichever node the router's ECMP picks, which has no record of the "
                "connection; use source node"
            )
        return value

    # Parsed once per pool value (the model is frozen): allocation asks a pool about addresses
    # on every Raft apply, and re-parsing hundreds of block strings there grows with the pool.
    @cached_property
    def _parsed(self) -> tuple[tuple[IPAddress, IPAddress], ...]:
        return tuple(_vip_block(text) for text in self.addresses)

    @cached_property
    def _by_version(self) -> dict[int, tuple[list[int], list[int]]]:
        """Per IP version, the blocks' first and last addresses as ints, sorted (disjoint)."""
        out: dict[int, tuple[list[int], list[int]]] = {}
        for first, last in sorted(self._parsed, key=lambda b: (b[0].version, int(b[0]))):
            firsts, lasts = out.setdefault(first.version, ([], []))
            firsts.append(int(first))
            lasts.append(int(last))
        return out

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Pool:
        """A copy; with `update`, validated again (and its parsed blocks computed anew)."""
        if update:
            return Pool.model_validate({**self.model_dump(), **update})
        return super().model_copy(deep=deep)

    def blocks(self) -> list[tuple[IPAddress, IPAddress]]:
        """The address blocks as (first, last) pairs, in the order written."""
        return list(self._parsed)

    def sorted_blocks(self, family: IPFamily) -> tuple[list[int], list[int]]:
        """The first and last addresses (ints) of the blocks of `family`, in address order."""
        return self._by_version.get(4 if family == IPFamily.IPV4 else 6, ([], []))

    def families(self) -> set[IPFamily]:
        return {IPFamily.IPV4 if version == 4 else IPFamily.IPV6 for version in self._by_version}

    def contains(self, address: IPAddress) -> bool:
        firsts, lasts = self._by_version.get(address.version, ([], []))
        value = int(address)
        at = bisect.bisect_right(firsts, value) - 1
        return at >= 0 and value <= lasts[at]

    def usable(self, address: IPAddress) -> bool:
        if not self.contains(address):
            return False
        return not (
            self.avoid_buggy_ips and address.version == 4 and int(address) % 256 in (0, 255)
        )

    def size(self, family: IPFamily) -> int:
        firsts, lasts = self.sorted_blocks(family)
        return sum(last - first + 1 for first, last in zip(firsts, lasts, strict=True))

    def outside(
        self, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    ) -> list[tuple[int, str]]:
        """The blocks (index, text) that do not lie whole inside one of `networks`."""
        return [
            (i, text)
            for i, (text, (first, last)) in enumerate(
                zip(self.addresses, self._parsed, strict=True)
            )
            if not any(
                net.version == first.version and first in net and last in net for net in networks
            )
        ]

    def overlaps(self, other: Pool) -> str | None:
        """Return a description of the first overlap (in address order) with another pool."""
        for version, (firsts, lasts) in sorted(self._by_version.items()):
            ofirsts, olasts = other._by_version.get(version, ([], []))
            i = j = 0
            while i < len(firsts) and j < len(ofirsts):
                if firsts[i] <= olasts[j] and ofirsts[j] <= lasts[i]:
                    make = address_from_int(version)
                    return (
                        f"{make(firsts[i])}-{make(lasts[i])} overlaps "
                        f"{make(ofirsts[j])}-{make(olasts[j])} of pool {other.name!r}"
                    )
                if lasts[i] < olasts[j]:
                    i += 1
                else:
                    j += 1
        return None


class PortKey(_Frozen):
    """A (protocol, port) pair: the unit of conflict when services share an address."""

    protocol: TransportProtocol = TransportProtocol.TCP
    port: PortNumber

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


class Backend(_Frozen):
    """Where traffic for one service port goes: a node's NodePort or a pod's port."""

    address: BackendIP
    port: PortNumber
    weight: int = Field(strict=True, default=1, ge=1, le=1000)
    node: Label | None = Field(default=None, description="Kubernetes node that hosts the backend")


class Port(_Frozen):
    """A port the VIP listens on, with the backends that serve it."""

    name: Label | None = Field(default=None, max_length=63)
    port: PortNumber
    protocol: TransportProtocol = TransportProtocol.TCP
    backends: list[Backend] = Field(default_factory=list)

    @field_validator("backends")
    @classmethod
    def _unique_backends(cls, value: list[Backend]) -> list[Backend]:
        seen: set[tuple[IPAddress, int]] = set()
        for backend in value:
            key = (backend.address, backend.port)
            if key in seen:
                raise ValueError(f"backend {backend.address} port {backend.port} is listed twice")
            seen.add(key)
        return value

    def key(self) -> PortKey:
        return PortKey(protocol=self.protocol, port=self.port)


class HealthCheck(_Frozen):
    """How each agent probes the backends of a service. The defaults (every 0.5 s, down after
    2 failures) take a dead backend out of the ruleset within about a second."""

    type: HealthCheckType = HealthCheckType.TCP
    path: str = Field(default="/", max_length=1024, pattern=r"^/[!-~]*$")
    expected_status: int = Field(strict=True, default=200, ge=100, le=599)
    interval: float = Field(strict=True, default=0.5, ge=0.05, le=3600, description="seconds")
    timeout: float = Field(strict=True, default=0.25, ge=0.01, le=60, description="seconds")
    rise: int = Field(strict=True, default=2, ge=1, le=100)
    fall: int = Field(strict=True, default=2, ge=1, le=100)

    @model_validator(mode="after")
    def _timeout_fits_interval(self) -> HealthCheck:
        if self.timeout > self.interval:
            raise ValueError(f"timeout {self.timeout} must not exceed interval {self.interval}")
        return self


class ServiceSpec(_Frozen):
    """A load-balanced service: a VIP (given, or allocated from a pool) and its ports."""

    id: ObjectId
    vip: VipIP | None = Field(default=None, description="A specific address; else allocated")
    prefer_vip: VipIP | None = Field(
        default=None,
        description="An address to take when it is free in the pool, else one is allocated "
        "(a move from another load balancer keeps its addresses without pinning them)",
    )
    pool: Name | None = Field(default=None, description="Pool to allocate from; else the default")
    ip_family: IPFamily | None = Field(
        default=None, description="Family to allocate when no vip is given (default ipv4)"
    )
    sharing_key: SharingKey | None = Field(
        default=None, description="Services with the same key and disjoint ports share a VIP"
    )
    ports: list[Port] = Field(min_length=1)
    traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    health_check_node_port: PortNumber | None = None
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    affinity: Affinity = Affinity.CONSISTENT
    nodes: list[Name] | None = Field(
        default=None, description="Appliance nodes allowed to own the VIP (default: any)"
    )

    @field_validator("ports")
    @classmethod
    def _unique_ports(cls, value: list[Port]) -> list[Port]:
        seen: set[PortKey] = set()
        for port in value:
            if port.key() in seen:
                raise ValueError(f"port {port.key()} is listed twice")
            seen.add(port.key())
        return value

    @model_validator(mode="after")
    def _family_matches_vip(self) -> ServiceSpec:
        if self.vip is not None and self.ip_family not in (None, family_of(self.vip)):
            raise ValueError(f"ip_family {self.ip_family} does not match vip {self.vip}")
        if self.prefer_vip is not None and family_of(self.prefer_vip) != self.family():
            raise ValueError(
                f"prefer_vip {self.prefer_vip} is not of the service's family {self.family()}"
            )
        return self

    def family(self) -> IPFamily:
        if self.vip is not None:
            return family_of(self.vip)
        return self.ip_family or IPFamily.IPV4

    def port_keys(self) -> list[PortKey]:
        return [port.key() for port in self.ports]


class AllocationRequest(_Frozen):
    """Ask for an address for `owner`; asking again for the same owner returns the same one."""

    owner: ObjectId
    pool: Name | None = None
    address: VipIP | None = None
    # Taken when free in the pool, else the lowest free address: never an error.
    prefer: VipIP | None = None
    ip_family: IPFamily | None = None
    sharing_key: SharingKey | None = None
    ports: list[PortKey] = Field(default_factory=list)

    @model_validator(mode="after")
    def _family_matches_address(self) -> AllocationRequest:
        if self.address is not None and self.ip_family not in (None, family_of(self.address)):
            raise ValueError(f"ip_family {self.ip_family} does not match address {self.address}")
        if self.prefer is not None and family_of(self.prefer) != self.family():
            raise ValueError(f"prefer {self.prefer} is not of the family {self.family()}")
        return self

    def family(self) -> IPFamily:
        if self.address is not None:
            return family_of(self.address)
        return self.ip_family or IPFamily.IPV4

    @classmethod
    def for_service(cls, spec: ServiceSpec) -> AllocationRequest:
        return cls(
            owner=spec.id,
            pool=spec.pool,
            address=spec.vip,
            prefer=spec.prefer_vip,
            ip_family=spec.family(),
            sharing_key=spec.sharing_key,
            ports=spec.port_keys(),
        )


class Allocation(_Frozen):
    """An address held by one owner (several owners may hold one address under a sharing key)."""

    owner: ObjectId
    address: VipIP
    pool: Name
    sharing_key: SharingKey | None = None
    ports: list[PortKey] = Field(default_factory=list)


class Service(_Frozen):
    """A service as stored: its spec, the address it was given and its backends' ids."""

    spec: ServiceSpec
    address: VipIP
    backend_ids: list[list[int]] = Field(
        default_factory=list,
        description="The id of each backend, per port, in the order of `spec.ports` and their "
        "backends: a backend keeps its id while it stays, a new one takes the lowest free id. "
        "Consistent hashing builds its tables from ids, so ports with the same ids share one. "
        "Empty (stored before ids existed): the backends' positions.",
    )

    @model_validator(mode="after")
    def _ids_match_backends(self) -> Service:
        if not self.backend_ids:
            return self
        shape = [len(p.backends) for p in self.spec.ports]
        if [len(ids) for ids in self.backend_ids] != shape:
            raise ValueError(f"backend_ids {self.backend_ids} do not match the ports' backends")
        for ids in self.backend_ids:
            if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
                raise ValueError(f"backend_ids {ids} are not distinct non-negative ids")
        return self

    def ids_of(self, index: int) -> list[int]:
        """The ids of port `index`'s backends."""
        if self.backend_ids:
            return self.backend_ids[index]
        return list(range(len(self.spec.ports[index].backends)))


class MemberReport(_Frozen):
    """What an agent says about itself, committed through Raft so every node can show it."""

    node: Name
    raft_address: str
    api_url: str | None = None
    version: str
    started_at: float = Field(
        strict=True, description="unix time the agent started, by its own clock"
    )
    reported_at: float = Field(
        strict=True, description="unix time of this report, by the node's own clock"
    )


class NodeInfo(_Frozen):
    """One appliance node as `raftlb nodes` shows it."""

    id: Name
    raft_address: str
    api_url: str | None = None
    version: str | None = None
    role: str = Field(description="leader, follower, candidate or unknown")
    connected: bool = Field(
        strict=True, description="this node has a Raft connection to it (or it is self)"
    )
    last_report_age: float | None = Field(
        strict=True, default=None, description="seconds since its report"
    )
    drained: bool = Field(default=False, strict=True)
    lease_age: float | None = Field(
        strict=True,
        default=None,
        description="seconds since this node last heard its lease heartbeat (itself: 0 while "
        "it holds a lease); with `leases: commit`, since its lease renewal changed",
    )
    vips: int = Field(strict=True, default=0, description="VIPs the committed assignment gives it")
    warming: bool | None = Field(
        strict=True,
        default=None,
        description="the leader gives it VIPs only when nobody else may take them: back from a "
        "restart or a gap in its renewals (for a warmup), or given up on by its peers lately; "
        "None when the node asked is not the leader (only the leader knows)",
    )


class ChangeReason(StrEnum):
    """Why a VIP changed owner: its owner stopped renewing (a failover), a drain or rebalance
    (break-before-make), a new VIP, or a VIP whose services are gone."""

    DEAD = "dead"
    DRAIN = "drain"
    REBALANCE = "rebalance"
    NEW = "new"
    REMOVED = "removed"


class Assignment(_Frozen):
    """Which node owns a VIP, and the epoch raised on every change of owner.

    A planned move is break-before-make: the VIP first goes to no node with `releasing` naming
    the old owner, which acknowledges once it stopped answering; only then is it given to the
    new owner."""

    vip: VipIP
    node: Name | None
    epoch: int = Field(strict=True, ge=0)
    releasing: Name | None = None
    since: float | None = Field(
        strict=True, default=None, description="unix time of the last change"
    )
    previous: Name | None = Field(default=None, description="the owner before the last change")
    reason: ChangeReason | None = Field(default=None, description="why it last changed owner")
    dead_for: float | None = Field(
        strict=True,
        default=None,
        description="for reason dead: seconds the leader had not seen the old owner renew",
    )


class LeaseRenewal(_Frozen):
    """A node's latest committed lease renewal. `sent_at` is the node's own monotonic clock:
    only that node compares it with its clock; others only compare (incarnation, seq)."""

    node: Name
    incarnation: int = Field(strict=True, ge=0, description="changes at every agent start")
    seq: int = Field(strict=True, ge=0)
    sent_at: float = Field(strict=True)

    def mark(self) -> tuple[int, int]:
        return (self.incarnation, self.seq)


def field_errors(
    exc: ValidationError, prefix: str = "", tags: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Turn a pydantic error into [{field, value, message}] with dotted field paths.

    Location parts that are not fields are left out: union members pydantic names like
    `function-plain[...]`, and discriminator values given in `tags` (e.g. command types).
    """
    out = []
    for err in exc.errors(include_url=False):
        parts = [
            str(part)
            for part in err["loc"]
            if not (isinstance(part, str) and ("[" in part or part in tags))
        ]
        loc = ".".join(parts)
        field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "(root)")
        message = str(err["msg"]).removeprefix("Value error, ")
        out.append({"field": field, "value": _short(err.get("input")), "message": message})
    return out


def format_field_errors(errors: list[dict[str, Any]]) -> Iterator[str]:
    for err in errors:
        yield f"{err['field']}: {err['message']} (got {err['value']!r})"


def _short(value: Any) -> Any:
    """The offending value as given when it is small and JSON-able, else a shortened repr."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    try:
        if len(json.dumps(value)) <= 200:
            return value
    except (TypeError, ValueError):
        pass
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
