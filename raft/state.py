"""The replicated cluster state and the deterministic application of commands to it.

`ClusterState.apply(raw_command)` is what every node runs for every committed log entry. It
never raises and never half-applies: a command is checked completely before anything changes,
and a batch that fails part-way is rolled back (the maps are persistent, so restoring them is
O(1); the address index undoes its own changes). The result (`{"ok": true, "value": ...}` or
`{"ok": false, "error": {...}}`) is the same on every node. No clock, randomness or I/O is read
here.

Cost: applying a command is O(log n) in the services, allocations and pool blocks (persistent
hash maps, `raft.ipam_index`), and a reader's snapshot (`snapshot()`) is O(1): it shares the
maps, which nobody changes in place. pysyncobj applies entries on its tick thread, which also
drives heartbeats and elections: work there that grew with the state made leaders lose their
followers at a few hundred services.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from immutables import Map
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
    address_text,
)
from raft import backend_ids, ipam, ownership
from raft.changelog import ChangeLog, Changes, LogReader
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
from raft.ipam_index import AddressIndex

STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class StateView:
    """A read-only snapshot of the state at one revision (shares the persistent maps)."""

    pools: Map[str, Pool]
    allocations: Map[str, Allocation]
    services: Map[str, Service]
    members: Map[str, MemberReport]
    by_address: Map[IPAddress, frozenset[str]]
    renewals: Map[str, LeaseRenewal]
    assignments: Map[str, Assignment]  # by VIP text
    drained: frozenset[str]
    routed: Map[str, str]  # VIPs of bgp pools (text) -> pool name
    vip_counts: Map[str, int]  # node -> VIPs the assignment gives it
    epochs: Map[str, int]  # node -> lease epoch (quorum-promise leases, raft/promises.py)
    revision: int
    log: LogReader

    def routed_vips(self) -> dict[str, Pool]:
        """VIPs of `bgp` pools (announced by every able node, owned by none), with their pool."""
        return {vip: self.pools[name] for vip, name in self.routed.items()}

    def changes_since(self, revision: int) -> Changes | None:
        """What changed after `revision` up to this one; None: too old, rescan everything."""
        return self.log.since(revision)

    def services_at(self, address: IPAddress) -> list[Service]:
        """The services on one address (several when they share it)."""
        owners = self.by_address.get(address, frozenset())
        return [self.services[o] for o in sorted(owners) if o in self.services]


class ClusterState:
    """Pools, allocations, services, member reports, leases and VIP assignments."""

    def __init__(self) -> None:
        self.pools: Map[str, Pool] = Map()
        self.allocations: Map[str, Allocation] = Map()
        self.services: Map[str, Service] = Map()
        self.members: Map[str, MemberReport] = Map()
        self.by_address: Map[IPAddress, frozenset[str]] = Map()
        self.renewals: Map[str, LeaseRenewal] = Map()
        self.assignments: Map[str, Assignment] = Map()
        self.drained: frozenset[str] = frozenset()
        self.routed: Map[str, str] = Map()
        self.vip_counts: Map[str, int] = Map()
        self.epochs: Map[str, int] = Map()
        self.index = AddressIndex()
        self.log = ChangeLog()
        # Number of commands applied successfully; a cheap version for caches and metrics.
        self.revision = 0

    _MAPS = (
        "pools",
        "allocations",
        "services",
        "members",
        "by_address",
        "renewals",
        "assignments",
        "drained",
        "routed",
        "vip_counts",
        "epochs",
    )

    def snapshot(self) -> StateView:
        """An O(1) read-only view of the state as it is now."""
        return StateView(
            **{name: getattr(self, name) for name in self._MAPS},
            revision=self.revision,
            log=self.log.reader(self.revision),
        )

    def routed_vips(self) -> dict[str, Pool]:
        return {vip: self.pools[name] for vip, name in self.routed.items()}

    # -- applying commands -------------------------------------------------------------------

    def apply(self, raw: Any) -> dict[str, Any]:
        """Apply one committed command; return its result. Never raises."""
        saved = {name: getattr(self, name) for name in self._MAPS}
        try:
            with self.index.transaction():
                command = parse_command(raw)
                if isinstance(command, Batch):
                    values = []
                    for index, sub in enumerate(command.commands):
                        try:
                            values.append(self._apply_one(sub))
                        except CommandError as exc:
                            exc.index = index
                            exc.message = f"item {index}: {exc.message}; nothing was applied"
                            raise
                    value: Any = {"results": values}
                else:
                    value = self._apply_one(command)
        except (CommandError, ValidationError) as exc:
            for name, old in saved.items():
                setattr(self, name, old)
            self.log.discard()
            if isinstance(exc, CommandError):
                return {"ok": False, "error": exc.to_dict()}
            # A model rebuilt inside a handler; still deterministic.
            return {"ok": False, "error": {"code": "invalid", "message": str(exc)}}
        self.revision += 1
        self.log.commit(self.revision)
        return {"ok": True, "value": value}

    def _apply_one(self, command: Command) -> Any:
        match command:
            case PutPool(pool=pool):
                self._put_pool(pool)
                return {"pool": pool.model_dump(mode="json")}
            case DeletePool(name=name):
                old = self.pools.get(name)
                if old is None:
                    raise CommandError("not_found", f"pool {name!r} does not exist")
                ipam.check_pool_delete(name, self.index)
                self.index.remove_pool(old)
                self.pools = self.pools.delete(name)
                self.log.note("pools", name)
                return {"deleted": name}
            case PutService() | DeleteService() | Allocate() | Release():
                return self._apply_allocating(command)
            case ReportMember(report=report):
                self.members = self.members.set(report.node, report)
                return {}
            case RenewLease(renewal=renewal):
                current = self.renewals.get(renewal.node)
                newer = ownership.renewal_is_newer(current, renewal)
                if newer:
                    self.renewals = self.renewals.set(renewal.node, renewal)
                return {"newer": newer}
            case AssignVips():
                updates, result, raised = ownership.apply_assign(
                    self.assignments, self.renewals, command, self.epochs
                )
                self._set_assignments(updates)
                for node in sorted(raised):
                    self.epochs = self.epochs.set(node, self.epochs.get(node, 0) + 1)
                return result
            case ReleasedVips(node=node, vips=vips):
                updates, done = ownership.apply_released(self.assignments, node, vips)
                self._set_assignments(updates)
                return {"released": done}
            case SetDrain(node=node, drained=drained):
                ownership.check_drain(node, self.members)
                if (node in self.drained) != drained:
                    self.drained = self.drained | {node} if drained else self.drained - {node}
                    self.log.note("drained", node)
                return {"node": node, "drained": drained}
        raise CommandError("unsupported", f"command {command.type!r} cannot be nested here")

    def _apply_allocating(self, command: PutService | DeleteService | Allocate | Release) -> Any:
        match command:
            case PutService(service=spec):
                allocation = ipam.allocate(
                    AllocationRequest.for_service(spec),
                    self.pools,
                    self.allocations,
                    self.by_address,
                    self.index,
                )
                self._set_allocation(allocation)
                # Built from validated parts: validating (and dumping) them again here cost
                # more than all the rest of the apply, on the thread that sends heartbeats.
                ids = backend_ids.assign(spec, self.services.get(spec.id))
                service = Service.model_construct(
                    spec=spec, address=allocation.address, backend_ids=ids
                )
                self.services = self.services.set(spec.id, service)
                self.log.note("services", spec.id)
                # The submitter rebuilds the whole service from its spec (appliance.api).
                address = address_text(allocation.address)
                return {"service": {"id": spec.id, "address": address, "backend_ids": ids}}
            case DeleteService(id=service_id, missing_ok=missing_ok):
                if service_id not in self.services:
                    if missing_ok:
                        return {"deleted": service_id, "existed": False}
                    raise CommandError("not_found", f"service {service_id!r} does not exist")
                self.services = self.services.delete(service_id)
                self.log.note("services", service_id)
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
                allocation = ipam.allocate(
                    request, self.pools, self.allocations, self.by_address, self.index
                )
                self._set_allocation(allocation)
                return {"allocation": allocation.model_dump(mode="json")}
        if command.owner in self.services:
            raise CommandError(
                "conflict", f"{command.owner!r} belongs to a service: delete the service instead"
            )
        if command.owner not in self.allocations:
            raise CommandError("not_found", f"no allocation for owner {command.owner!r}")
        self._drop_allocation(command.owner)
        return {"deleted": command.owner}

    def _put_pool(self, pool: Pool) -> None:
        old = self.pools.get(pool.name)
        if old is not None:
            self.index.remove_pool(old)
        ipam.check_pool(pool, old, self.index, self.by_address)
        self.index.add_pool(pool)
        self.pools = self.pools.set(pool.name, pool)
        self.log.note("pools", pool.name)
        if old is not None and old.announce != pool.announce:
            # Its VIPs change from owned (l2) to routed (bgp) or back: O(its allocations), once.
            for owner in sorted(self.index.pool_owners(pool.name)):
                self._route(self.allocations[owner].address, pool)

    def _route(self, address: IPAddress, pool: Pool | None) -> None:
        vip = address_text(address)
        if pool is not None and pool.announce == AnnounceMode.BGP:
            if self.routed.get(vip) != pool.name:
                self.routed = self.routed.set(vip, pool.name)
        elif vip in self.routed:
            self.routed = self.routed.delete(vip)

    def _set_assignments(self, updates: Mapping[str, Assignment]) -> None:
        if not updates:
            return
        assignments = self.assignments.mutate()
        counts = self.vip_counts.mutate()
        for vip, assignment in updates.items():
            old = assignments.get(vip)
            if old is not None and old.node is not None:
                counts[old.node] = counts.get(old.node, 0) - 1
                if counts[old.node] == 0:
                    del counts[old.node]
            if assignment.node is not None:
                counts[assignment.node] = counts.get(assignment.node, 0) + 1
            assignments[vip] = assignment
            self.log.note("assignments", vip)
        self.assignments = assignments.finish()
        self.vip_counts = counts.finish()

    def _set_allocation(self, allocation: Allocation) -> None:
        old = self.allocations.get(allocation.owner)
        if old == allocation:
            return
        self._drop_allocation(allocation.owner)
        self.allocations = self.allocations.set(allocation.owner, allocation)
        self.log.note("allocations", allocation.owner)
        address = allocation.address
        owners = self.by_address.get(address, frozenset())
        if not owners:
            self.index.address_taken(
                address.version, int(address), allocation.pool, allocation.sharing_key
            )
            self._route(address, self.pools.get(allocation.pool))
        self.by_address = self.by_address.set(address, owners | {allocation.owner})
        self.index.owner_added(allocation.pool, allocation.owner)

    def _drop_allocation(self, owner: str) -> None:
        old = self.allocations.get(owner)
        if old is None:
            return
        self.allocations = self.allocations.delete(owner)
        self.log.note("allocations", owner)
        self.index.owner_removed(old.pool, owner)
        owners = self.by_address.get(old.address, frozenset()) - {owner}
        if owners:
            self.by_address = self.by_address.set(old.address, owners)
            return
        self.by_address = self.by_address.delete(old.address)
        self.index.address_freed(old.address.version, int(old.address), old.pool, old.sharing_key)
        self._route(old.address, None)

    # -- copies and serialisation --------------------------------------------------------------

    def copy(self) -> ClusterState:
        """An independent copy (rebuilt from a dump: O(n), for tests and tools)."""
        other = ClusterState.from_data(self.to_data())
        other.revision = self.revision
        return other

    def to_data(self) -> dict[str, Any]:
        """A JSON-able dump: what the Raft full dump stores, independent of class layout."""
        return view_to_data(self.snapshot())

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ClusterState:
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"state dump format {data.get('format')!r} is not {STATE_FORMAT}")
        state = cls()
        state.revision = int(data.get("revision", 0))
        for raw in data.get("pools", []):
            pool = Pool.model_validate(raw)
            state.index.add_pool(pool)
            state.pools = state.pools.set(pool.name, pool)
        for raw in data.get("allocations", []):
            state._set_allocation(Allocation.model_validate(raw))
        services = state.services.mutate()
        for raw in data.get("services", []):
            service = Service.model_validate(raw)
            services[service.spec.id] = service
        state.services = services.finish()
        members = state.members.mutate()
        for raw in data.get("members", []):
            member = MemberReport.model_validate(raw)
            members[member.node] = member
        state.members = members.finish()
        renewals = state.renewals.mutate()
        for raw in data.get("renewals", []):
            renewal = LeaseRenewal.model_validate(raw)
            renewals[renewal.node] = renewal
        state.renewals = renewals.finish()
        state._set_assignments(
            {str(a.vip): a for a in (Assignment.model_validate(raw) for raw in data["assignments"])}
            if data.get("assignments")
            else {}
        )
        state.drained = frozenset(data.get("drained", []))
        epochs = state.epochs.mutate()
        for node, epoch in (data.get("epochs") or {}).items():
            epochs[str(node)] = int(epoch)
        state.epochs = epochs.finish()
        state.log.reset(state.revision)
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterState):
            return NotImplemented
        mine, theirs = self.to_data(), other.to_data()
        mine.pop("revision")
        theirs.pop("revision")
        return _canonical(mine) == _canonical(theirs)

    __hash__ = None  # type: ignore[assignment]


def view_to_data(view: StateView) -> dict[str, Any]:
    """The JSON-able dump of a snapshot (see `ClusterState.to_data`)."""
    return {
        "format": STATE_FORMAT,
        "revision": view.revision,
        "pools": [p.model_dump(mode="json") for p in view.pools.values()],
        "allocations": [a.model_dump(mode="json") for a in view.allocations.values()],
        "services": [s.model_dump(mode="json") for s in view.services.values()],
        "members": [m.model_dump(mode="json") for m in view.members.values()],
        "renewals": [r.model_dump(mode="json") for r in view.renewals.values()],
        "assignments": [a.model_dump(mode="json") for a in view.assignments.values()],
        "drained": sorted(view.drained),
        "epochs": dict(view.epochs.items()),
    }


def _canonical(data: dict[str, Any]) -> dict[str, Any]:
    return {
        key: sorted(value, key=repr) if isinstance(value, list) else value
        for key, value in data.items()
    }
