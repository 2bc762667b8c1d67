"""What a sync pass changes in the appliance, and what it writes back. Pure.

The appliance is the source of truth for addresses (its IPAM is idempotent by service id), so
two sync replicas computing the same plan from the same Kubernetes state converge instead of
fighting: both PUT the same specs and get the same addresses back. A replica only ever touches
ids of its own cluster (`<cluster>/...`), so clusters sharing an appliance stay apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.model import IPAddress, Service, ServiceSpec


def fingerprint(spec: ServiceSpec) -> bytes:
    """A spec's identity as 16 bytes: two specs are equal exactly when their JSON is, but for
    `prefer_vip`, which only matters to a first allocation: the status the sync writes after it
    must not make every Service be PUT again."""
    body = spec.model_dump(mode="json", exclude={"prefer_vip"})
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Stored:
    """What the sync keeps of a service in the appliance: its address and its spec's
    fingerprint. A whole Service with 10 backends weighs ~8 KB in memory; 5,000 of them made
    most of a sync's memory."""

    id: str
    address: IPAddress
    spec: bytes  # fingerprint(spec)

    @classmethod
    def of(cls, service: Service) -> Stored:
        return cls(service.spec.id, service.address, fingerprint(service.spec))


class _Addressed(Protocol):
    @property
    def address(self) -> IPAddress: ...


@dataclass
class Plan:
    puts: list[ServiceSpec] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes)


def owned(cluster: str, service_id: str) -> bool:
    return service_id.startswith(f"{cluster}/")


def plan(cluster: str, desired: Mapping[str, ServiceSpec], existing: Mapping[str, Stored]) -> Plan:
    """PUT what is new or changed, DELETE what this cluster has in the appliance but Kubernetes
    no longer wants (deleted, or no longer of type LoadBalancer / of our class)."""
    out = Plan()
    for sid, spec in sorted(desired.items()):
        if not owned(cluster, sid):
            raise ValueError(f"service id {sid!r} is not of cluster {cluster!r}")
        current = existing.get(sid)
        if current is None or current.spec != fingerprint(spec):
            out.puts.append(spec)
    out.deletes = sorted(sid for sid in existing if owned(cluster, sid) and sid not in desired)
    return out


def ingress_patch(services: Iterable[_Addressed]) -> dict[str, Any]:
    """The merge-patch body of a Service's status: one ingress entry per VIP (IPv4 first)."""
    addresses = sorted({s.address for s in services}, key=lambda a: (a.version, int(a)))
    return {
        "status": {
            "loadBalancer": {"ingress": [{"ip": str(a), "ipMode": "VIP"} for a in addresses]}
        }
    }
