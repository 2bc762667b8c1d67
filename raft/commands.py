"""Replicated commands: versioned, JSON-able values with a type.

Callers build these values (`PutService(service=spec)`, `batch(pools, services, deletes)`) and
submit them; `encode` turns one into the plain dict `{"v": 1, "type": "...", ...}` that travels
through the single replicated entry point. Every node parses it with `parse_command`; a type or
version this node does not know
is refused the same way everywhere, so a cluster in the middle of a rolling upgrade never diverges
on state (the newer node's command simply fails with `unsupported`). Commands carry everything
they need (timestamps included): applying one never reads a clock, a random source or the disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from appliance.model import (
    AllocationRequest,
    ChangeReason,
    LeaseRenewal,
    MemberReport,
    Name,
    ObjectId,
    Pool,
    ServiceSpec,
    field_errors,
)

COMMAND_VERSION = 1


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1


class PutPool(_Command):
    type: Literal["pool.put"] = "pool.put"
    pool: Pool


class DeletePool(_Command):
    type: Literal["pool.delete"] = "pool.delete"
    name: Name


class PutService(_Command):
    type: Literal["service.put"] = "service.put"
    service: ServiceSpec


class DeleteService(_Command):
    type: Literal["service.delete"] = "service.delete"
    id: ObjectId
    # A batch's deletes are idempotent: a retried batch whose first try was applied (its
    # answer lost, or a 503 "timeout" that committed after all) must not fail on them.
    # Absent from entries written before it existed: those keep failing as they did.
    missing_ok: bool = Field(default=False, strict=True)


class Allocate(_Command):
    type: Literal["allocation.create"] = "allocation.create"
    request: AllocationRequest


class Release(_Command):
    type: Literal["allocation.delete"] = "allocation.delete"
    owner: ObjectId


class ReportMember(_Command):
    type: Literal["member.report"] = "member.report"
    report: MemberReport


class RenewLease(_Command):
    type: Literal["lease.renew"] = "lease.renew"
    renewal: LeaseRenewal


class Placement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node: Name | None
    releasing: Name | None = None
    reason: ChangeReason | None = None
    dead_for: float | None = Field(default=None, ge=0)


class Evidence(BaseModel):
    """Nodes that abandoned a node's lease epoch (raft/promises.py), by registered incarnation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epoch: int = Field(strict=True, ge=0)
    by: dict[Name, int]


class AssignVips(_Command):
    """The leader's decision.

    Under committed-renewal leases (mechanism A, `evidence` None) `based_on` is the
    (incarnation, seq) of each node's last renewal the leader had seen: taking a VIP from a node
    that renewed since is refused at apply time, so a deposed or stalled leader's queued
    decision cannot take a VIP from a live owner. Under quorum-promise leases (mechanism B)
    taking a VIP from a node needs `evidence` against its current epoch from enough of the
    `cluster_size` nodes, and raises that epoch (raft/promises.py)."""

    type: Literal["vips.assign"] = "vips.assign"
    placements: dict[str, Placement]
    based_on: dict[Name, tuple[int, int]] = Field(default_factory=dict)
    evidence: dict[Name, Evidence] | None = None
    # Epochs to raise without taking anything (node -> its epoch now): no evidence needed.
    refresh: dict[Name, int] = Field(default_factory=dict)
    cluster_size: int = Field(default=0, strict=True, ge=0)
    at: float = Field(description="the leader's unix time, shown as `since`")


class ReleasedVips(_Command):
    """An old owner's acknowledgement that it stopped answering for these VIPs."""

    type: Literal["vips.released"] = "vips.released"
    node: Name
    vips: list[str]


class SetDrain(_Command):
    type: Literal["node.drain"] = "node.drain"
    node: Name
    drained: bool


SimpleCommand = Annotated[
    PutPool
    | DeletePool
    | PutService
    | DeleteService
    | Allocate
    | Release
    | ReportMember
    | RenewLease
    | AssignVips
    | ReleasedVips
    | SetDrain,
    Field(discriminator="type"),
]


class Batch(_Command):
    """Several commands applied all or nothing (e.g. `raftlb services apply -f` of a file)."""

    type: Literal["batch"] = "batch"
    commands: list[SimpleCommand] = Field(min_length=1, max_length=10_000)


Command = Annotated[SimpleCommand | Batch, Field(discriminator="type")]
# Derived from the union, so that a command added there is known everywhere at once.
COMMAND_CLASSES: tuple[type[_Command], ...] = (*get_args(get_args(SimpleCommand)[0]), Batch)
KNOWN_TYPES = frozenset(str(c.model_fields["type"].default) for c in COMMAND_CLASSES)
_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


def batch(
    pools: Iterable[Pool] = (),
    services: Iterable[ServiceSpec] = (),
    deletes: Iterable[str] = (),
) -> Batch:
    """Pools, then services, then service deletions, applied all or nothing. The deletions
    are `missing_ok`: a batch sent again after a lost answer must not fail on them."""
    commands: list[SimpleCommand] = [PutPool(pool=p) for p in pools]
    commands += [PutService(service=s) for s in services]
    commands += [DeleteService(id=d, missing_ok=True) for d in deletes]
    return Batch(commands=commands)


class CommandError(Exception):
    """A command refused at apply time; the same refusal happens on every node."""

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        details: Any = None,
        value: Any = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.details = details
        self.value = value
        self.index: int | None = None  # position in a batch, set by the batch

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
            out["value"] = self.value
        if self.index is not None:
            out["index"] = self.index
        if self.details is not None:
            out["details"] = self.details
        return out


def parse_command(raw: Any) -> Command:
    """Parse a command dict; raise CommandError(unsupported|invalid) naming what is wrong."""
    if not isinstance(raw, dict):
        raise CommandError("invalid", f"a command must be an object, got {type(raw).__name__}")
    version, kind = raw.get("v"), raw.get("type")
    # `type(...) is int`: True == 1 in Python, and an unhashable type must not raise here.
    if (
        type(version) is not int
        or version != COMMAND_VERSION
        or not isinstance(kind, str)
        or kind not in KNOWN_TYPES
    ):
        raise CommandError(
            "unsupported",
            f"command type {kind!r} version {version!r} is not known to this node "
            f"(it speaks version {COMMAND_VERSION}); finish the rolling upgrade first",
        )
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        errors = field_errors(exc, tags=KNOWN_TYPES)
        raise CommandError("invalid", "invalid command", details=errors) from None


def encode(command: Command) -> dict[str, Any]:
    """The wire form of a command: what goes into the Raft log."""
    return command.model_dump(mode="json")
