"""What a sync pass changes in the appliance, and what it writes back. Pure.

The appliance is the source of truth for addresses (its IPAM is idempotent by service id), so
two sync replicas computing the same plan from the same Kubernetes state converge instead of
fighting: both PUT the same specs and get the same addresses back. A replica only ever touches
ids of its own cluster (`<cluster>/...`), so clusters sharing an appliance stay apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.model import Service, ServiceSpec


@dataclass
class Plan:
    puts: list[ServiceSpec] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes)


def owned(cluster: str, service_id: str) -> bool:
    return service_id.startswith(f"{cluster}/")


def plan(cluster: str, desired: Mapping[str, ServiceSpec], existing: Mapping[str, Service]) -> Plan:
    """PUT what is new or changed, DELETE what this cluster has in the appliance but Kubernetes
    no longer wants (deleted, or no longer of type LoadBalancer / of our class)."""
    out = Plan()
    for sid, spec in sorted(desired.items()):
        if not owned(cluster, sid):
            raise ValueError(f"service id {sid!r} is not of cluster {cluster!r}")
        current = existing.get(sid)
        if current is None or current.spec != spec:
            out.puts.append(spec)
    out.deletes = sorted(sid for sid in existing if owned(cluster, sid) and sid not in desired)
    return out


def ingress_patch(services: Iterable[Service]) -> dict[str, Any]:
    """The merge-patch body of a Service's status: one ingress entry per VIP (IPv4 first)."""
    addresses = sorted({s.address for s in services}, key=lambda a: (a.version, int(a)))
    return {
        "status": {
            "loadBalancer": {"ingress": [{"ip": str(a), "ipMode": "VIP"} for a in addresses]}
        }
    }
