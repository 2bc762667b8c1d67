"""The replicated cluster state and the deterministic application of commands to it.

`ClusterState.apply(raw_command)` is what every node runs for every committed log entry. It
never raises and never half-applies: a command is checked completely before anything changes
(a batch is applied to a copy that replaces the state only when every part succeeded), and the
result (`{"ok": true, "value": ...}` or `{"ok": false, "error": {...}}`) is the same on every
node. No clock, randomness or I/O is read here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from appliance.model import (
    Allocation,
    AllocationRequest,
    AnnounceMode,
    Assignment,
    IPAddress,
    LeaseRenewal,
    MemberReport,
    Pool,
    Service,
)
from raft import ipam, ownership
from raft.commands import (
    Allocate,
    AssignVips,
    Batch,
    Command,
    CommandError,
    DeletePool,
    DeleteService,
    PutPool,
    PutService,
    Release,
    ReleasedVips,
    RenewLease,
    ReportMember,
    SetDrain,
    parse_command,
)

STATE_FORMAT = 1


class ClusterState:
    """Pools, allocations, services and member reports, plus an address index."""

    def __init__(self) -> None:
        self.pools: dict[str, Pool] = {}
        self.allocations: dict[str, Allocation] = {}
        self.services: dict[str, Service] = {}
        self.members: dict[str, MemberReport] = {}
        self.by_address: dict[IPAddress, set[str]] = {}
        self.renewals: dict[str, LeaseRenewal] = {}
        self.assignments: dict[str, Assignment] = {}  # by VIP text
        self.drained: set[str] = set()
        # Number of commands applied successfully; a cheap version for caches and metrics.
        self.revision = 0

    def routed_vips(self) -> dict[str, Pool]:
        """VIPs of `bgp` pools (announced by every able node, owned by none), with their pool."""
        out = {}
        for allocation in self.allocations.values():
            pool = self.pools.get(allocation.pool)
            if pool is not None and pool.announce == AnnounceMode.BGP:
                out[str(allocation.address)] = pool
        return out

    # -- applying commands -------------------------------------------------------------------

    def apply(self, raw: Any) -> dict[str, Any]:
        """Apply one committed command; return its result. Never raises."""
        try:
            command = parse_command(raw)
            if isinstance(command, Batch):
                trial = self.copy()
                values = []
                for index, sub in enumerate(command.commands):
                    try:
                        values.append(trial._apply_one(sub))
                    except CommandError as exc:
                        exc.index = index
                        exc.message = f"item {index}: {exc.message}; nothing was applied"
                        raise
                self._adopt(trial)
                value: Any = {"results": values}
            else:
                value = self._apply_one(command)
        except CommandError as exc:
            return {"ok": False, "error": exc.to_dict()}
        except ValidationError as exc:  # a model rebuilt inside a handler; still deterministic
            return {"ok": False, "error": {"code": "invalid", "message": str(exc)}}
        self.revision += 1
        return {"ok": True, "value": value}

    def _apply_one(self, command: Command) -> Any:
        match command:
            case PutPool(pool=pool):
                ipam.check_pool(pool, self.pools, self.allocations)
                self.pools[pool.name] = pool
                return {"pool": pool.model_dump(mode="json")}
            case DeletePool(name=name):
                if name not in self.pools:
                    raise CommandError("not_found", f"pool {name!r} does not exist")
                ipam.check_pool_delete(name, self.allocations)
                del self.pools[name]
                return {"deleted": name}
            case PutService(service=spec):
                allocation = ipam.allocate(
                    AllocationRequest.for_service(spec),
                    self.pools,
                    self.allocations,
                    self.by_address,
                )
                self._set_allocation(allocation)
                service = Service(spec=spec, address=allocation.address)
                self.services[spec.id] = service
                return {"service": service.model_dump(mode="json")}
            case DeleteService(id=service_id):
                if service_id not in self.services:
                    raise CommandError("not_found", f"service {service_id!r} does not exist")
                del self.services[service_id]
                self._drop_allocation(service_id)
                return {"deleted": service_id}
            case Allocate(request=request):
                if request.owner in self.services:
                    raise CommandError(
                        "conflict",
                        f"{request.owner!r} is a service: change its address with a service "
                        "update, not an allocation",
                        field="owner",
                    )
                allocation = ipam.allocate(request, self.pools, self.allocations, self.by_address)
                self._set_allocation(allocation)
                return {"allocation": allocation.model_dump(mode="json")}
            case Release(owner=owner):
                if owner in self.services:
                    raise CommandError(
                        "conflict", f"{owner!r} belongs to a service: delete the service instead"
                    )
                if owner not in self.allocations:
                    raise CommandError("not_found", f"no allocation for owner {owner!r}")
                self._drop_allocation(owner)
                return {"deleted": owner}
            case ReportMember(report=report):
                self.members[report.node] = report
                return {}
            case RenewLease(renewal=renewal):
                return {"newer": ownership.apply_renewal(self.renewals, renewal)}
            case AssignVips():
                return ownership.apply_assign(self.assignments, self.renewals, command)
            case ReleasedVips(node=node, vips=vips):
                return {"released": ownership.apply_released(self.assignments, node, vips)}
            case SetDrain(node=node, drained=drained):
                ownership.check_drain(node, self.members)
                (self.drained.add if drained else self.drained.discard)(node)
                return {"node": node, "drained": drained}
        raise CommandError("unsupported", f"command {command.type!r} cannot be nested here")

    def _set_allocation(self, allocation: Allocation) -> None:
        self._drop_allocation(allocation.owner)
        self.allocations[allocation.owner] = allocation
        self.by_address.setdefault(allocation.address, set()).add(allocation.owner)

    def _drop_allocation(self, owner: str) -> None:
        old = self.allocations.pop(owner, None)
        if old is None:
            return
        owners = self.by_address.get(old.address, set())
        owners.discard(owner)
        if not owners:
            self.by_address.pop(old.address, None)

    # -- copies and serialisation --------------------------------------------------------------

    def copy(self) -> ClusterState:
        """A copy that can be changed without touching this one (models are frozen: shared)."""
        other = ClusterState()
        other.pools = dict(self.pools)
        other.allocations = dict(self.allocations)
        other.services = dict(self.services)
        other.members = dict(self.members)
        other.by_address = copy.deepcopy(self.by_address)
        other.renewals = dict(self.renewals)
        other.assignments = dict(self.assignments)
        other.drained = set(self.drained)
        other.revision = self.revision
        return other

    def _adopt(self, other: ClusterState) -> None:
        self.__dict__.update(other.__dict__)

    def to_data(self) -> dict[str, Any]:
        """A JSON-able dump: what the Raft full dump stores, independent of class layout."""
        return {
            "format": STATE_FORMAT,
            "revision": self.revision,
            "pools": [p.model_dump(mode="json") for p in self.pools.values()],
            "allocations": [a.model_dump(mode="json") for a in self.allocations.values()],
            "services": [s.model_dump(mode="json") for s in self.services.values()],
            "members": [m.model_dump(mode="json") for m in self.members.values()],
            "renewals": [r.model_dump(mode="json") for r in self.renewals.values()],
            "assignments": [a.model_dump(mode="json") for a in self.assignments.values()],
            "drained": sorted(self.drained),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ClusterState:
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"state dump format {data.get('format')!r} is not {STATE_FORMAT}")
        state = cls()
        state.revision = int(data.get("revision", 0))
        for raw in data.get("pools", []):
            pool = Pool.model_validate(raw)
            state.pools[pool.name] = pool
        for raw in data.get("allocations", []):
            state._set_allocation(Allocation.model_validate(raw))
        for raw in data.get("services", []):
            service = Service.model_validate(raw)
            state.services[service.spec.id] = service
        for raw in data.get("members", []):
            member = MemberReport.model_validate(raw)
            state.members[member.node] = member
        for raw in data.get("renewals", []):
            renewal = LeaseRenewal.model_validate(raw)
            state.renewals[renewal.node] = renewal
        for raw in data.get("assignments", []):
            assignment = Assignment.model_validate(raw)
            state.assignments[str(assignment.vip)] = assignment
        state.drained = set(data.get("drained", []))
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterState):
            return NotImplemented
        mine, theirs = self.to_data(), other.to_data()
        mine.pop("revision")
        theirs.pop("revision")
        return _canonical(mine) == _canonical(theirs)

    __hash__ = None  # type: ignore[assignment]


def _canonical(data: dict[str, Any]) -> dict[str, Any]:
    return {
        key: sorted(value, key=repr) if isinstance(value, list) else value
        for key, value in data.items()
    }
