"""What a node forwards, as plain values (pure): the services of the VIPs it holds, turned into
one `Forward` per VIP port with the backends its new connections may go to."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from appliance.dataplane.hashing import Chain, Hashing
from appliance.model import Affinity, Backend, IPAddress, Service


@dataclass(frozen=True, slots=True)
class Target:
    address: IPAddress
    port: int
    weight: int = 1
    id: int = 0  # the backend's id (raft/backend_ids.py): its slots in a consistent table


@dataclass(frozen=True, slots=True)
class Forward:
    """One VIP port and the backends its new connections go to (empty: reject)."""

    vip: IPAddress
    protocol: str  # "tcp" or "udp"
    port: int
    targets: tuple[Target, ...]
    affinity: bool = False  # by the client's address (Affinity.SOURCE)
    service: str = ""
    hashing: Hashing | None = None  # consistent hashing (Affinity.CONSISTENT)
    snat: bool = False  # backends see the VIP as the source, not this node's address

    def chain(self) -> Chain | None:
        """The hash chain that picks this port's backend, when one is needed (two healthy
        backends or more; with one, every flow goes to it anyway)."""
        if self.hashing is None or len(self.targets) < 2:
            return None
        healthy = tuple(sorted((t.id, t.weight) for t in self.targets))
        return Chain(self.hashing, healthy)


@dataclass(frozen=True, slots=True)
class Policy:
    """What a VIP's pool says about balancing (model.Balancing, resolved)."""

    size: int = 4093
    seed: int = 0x72616C62
    snat: bool = False


Healthy = Callable[[str, Backend], bool]
ForwardMap = Mapping[IPAddress, tuple[Forward, ...]]
DEFAULT_POLICY = Policy()


def forwards(
    services: Iterable[Service],
    held: Iterable[IPAddress],
    healthy: Healthy | None = None,
    policy: Callable[[Service], Policy] | None = None,
) -> list[Forward]:
    """The forwards of the services whose VIP this node holds, in a stable order.

    Backends of the other address family than the VIP are left out (NAT cannot cross
    families), as are those `healthy(service_id, backend)` rejects; a consistent port's table
    is built over all of its family's backends, healthy or not (see hashing.py).
    """
    held_set = set(held)
    out = []
    for service in services:
        if service.address not in held_set:
            continue
        spec = service.spec
        rules = policy(service) if policy is not None else DEFAULT_POLICY
        for index, port in enumerate(spec.ports):
            family = [
                (b, i)
                for b, i in zip(port.backends, service.ids_of(index), strict=True)
                if b.address.version == service.address.version
            ]
            targets = tuple(
                Target(b.address, b.port, b.weight, i)
                for b, i in family
                if healthy is None or healthy(spec.id, b)
            )
            hashing = None
            if spec.affinity == Affinity.CONSISTENT and family:
                members = tuple(sorted((i, b.weight) for b, i in family))
                hashing = Hashing(members, rules.size, rules.seed)
            out.append(
                Forward(
                    vip=service.address,
                    protocol=str(port.protocol),
                    port=port.port,
                    targets=targets,
                    affinity=spec.affinity == Affinity.SOURCE,
                    service=spec.id,
                    hashing=hashing,
                    snat=rules.snat,
                )
            )
    return sorted(out, key=lambda f: (f.vip.version, int(f.vip), f.protocol, f.port))
