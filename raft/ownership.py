"""VIP ownership under quorum leases (mechanism A of DESIGN.md): the pure parts.

The invariant: at no moment do two nodes answer for one layer-2 VIP. The argument:

1. Node X answers for a VIP only while (a) the committed assignment names X and (b) X's lease is
   valid: its last *committed* renewal was sent less than L ago by X's own monotonic clock
   (`lease_deadline`). X rechecks (b) against the clock before every answer, so a frozen X that
   thaws after L answers nothing, and a crashed X answers nothing at all (answers come from the
   agent's userspace, never from the kernel).
2. The leader takes a VIP from X for another node Y only when no renewal of X reached its log for
   `dead_after` = L x (1 + drift) + margin by the leader's clock (`Liveness`). X's last committed
   renewal was sent before the leader saw it, so by then X's lease has ended, whatever X's clock
   rate within `drift`. The decision carries the last (incarnation, seq) of X the leader saw;
   applying it is refused when a newer renewal of X is committed (`apply_assign`), so a renewal
   racing the decision, or a deposed leader's queued decision, cannot take the VIP from a live X.
3. Y starts answering only after it applied the assignment, i.e. after it committed.
4. A planned move from a live X (drain, rebalance) is break-before-make: the VIP goes to nobody
   with `releasing=X`; X stops answering, then commits `vips.released`; only then is it given to
   Y. If X dies before acknowledging, rule 2 applies.
5. A new leader starts its `Liveness` from what it saw as a follower: for each node, the time
   (its own clock) at which it applied that node's latest renewal. A follower applies only
   committed entries, and a renewal is sent before it commits, so X's lease began before that
   time and rule 2's argument holds unchanged; a renewal it never saw counts as seen when it
   took over (a full `dead_after` of waiting). The election then overlaps the wait instead of
   adding to it. It decides only once it has applied an entry of its own term (everything it
   inherited).
6. Without quorum no renewal commits, so a minority node's lease lapses within L: layer-2 VIPs
   are withdrawn without quorum (documented minority behaviour).

L must outlast an election plus the worst renewal delay, or a leader crash drops every VIP: the
timing profiles check this (raft/timing.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from appliance.model import Assignment, LeaseRenewal
from raft.commands import AssignVips, CommandError
from raft.promises import evidence_needed


def lease_deadline(
    renewals: Mapping[str, LeaseRenewal], node: str, incarnation: int, lease: float
) -> float | None:
    """When node's lease ends on its own monotonic clock, or None if it holds none now."""
    renewal = renewals.get(node)
    if renewal is None or renewal.incarnation != incarnation:
        return None
    return renewal.sent_at + lease


def renewal_is_newer(current: LeaseRenewal | None, renewal: LeaseRenewal) -> bool:
    """Only the newest renewal of each node (by incarnation, then seq) is kept."""
    return current is None or current.mark() < renewal.mark()


def valid_evidence(
    command: AssignVips, renewals: Mapping[str, LeaseRenewal], epochs: Mapping[str, int]
) -> set[str]:
    """The nodes the command's evidence really gives up on, by the state it applies to: the
    epoch is current, and enough other nodes abandoned it by their registered incarnation."""
    out = set()
    need = evidence_needed(command.cluster_size)
    for node, evidence in (command.evidence or {}).items():
        if evidence.epoch != epochs.get(node, 0):
            continue
        by = [
            peer
            for peer, incarnation in evidence.by.items()
            if peer != node
            and (renewal := renewals.get(peer)) is not None
            and renewal.incarnation == incarnation
        ]
        if command.cluster_size > 1 and len(by) >= need:
            out.add(node)
    return out


def apply_assign(
    assignments: Mapping[str, Assignment],
    renewals: Mapping[str, LeaseRenewal],
    command: AssignVips,
    epochs: Mapping[str, int] | None = None,
) -> tuple[dict[str, Assignment], dict[str, Any], set[str]]:
    """The leader's placements as the assignments to store, the command's result, and the
    nodes whose lease epoch to raise. A VIP taken from its holder without its consent is
    refused when the holder renewed since (mechanism A), or without valid evidence against
    the holder (mechanism B)."""
    updates: dict[str, Assignment] = {}
    changed, refused = [], []
    promise_mode = command.evidence is not None
    taken_from: set[str] = set()
    given_up = valid_evidence(command, renewals, epochs or {}) if promise_mode else set()
    for vip, placement in sorted(command.placements.items()):
        current = assignments.get(vip)
        old_node = current.node if current else None
        old_releasing = current.releasing if current else None
        if current and (old_node, old_releasing) == (placement.node, placement.releasing):
            continue
        # Taking the VIP from a holder (or an unacknowledged releaser) without its consent.
        holder = old_node if old_node not in (None, placement.node) else old_releasing
        if holder is not None and holder not in (placement.node, placement.releasing):
            if promise_mode:
                if holder not in given_up:
                    refused.append(vip)
                    continue
                taken_from.add(holder)
            else:
                seen = command.based_on.get(holder)
                renewal = renewals.get(holder)
                if renewal is not None and (seen is None or renewal.mark() > tuple(seen)):
                    refused.append(vip)
                    continue
        epoch = (current.epoch if current else 0) + (old_node != placement.node)
        if old_node != placement.node:
            # The record of the last change; the second half of a planned move keeps the node
            # it came from.
            previous = old_node or (current.releasing or current.previous if current else None)
            since: float | None = command.at
            reason, dead_for = placement.reason, placement.dead_for
        else:
            previous = current.previous if current else None
            since = current.since if current else None
            reason = current.reason if current else None
            dead_for = current.dead_for if current else None
        # Built from validated parts (the command was parsed): validating again cost more
        # than the rest of the apply, for decisions of thousands of VIPs.
        updates[vip] = Assignment.model_construct(
            vip=current.vip if current else _address(vip),
            node=placement.node,
            epoch=epoch,
            releasing=placement.releasing,
            since=since,
            previous=previous,
            reason=reason,
            dead_for=dead_for,
        )
        changed.append(vip)
    result: dict[str, Any] = {"changed": changed, "refused": refused}
    # An epoch is raised where something was taken without consent: the taking entry is
    # what the argument of raft/promises.py needs to find (evidence alone moves nothing).
    raised = given_up & taken_from
    if promise_mode:
        result["taken_from"] = sorted(raised)
        raised |= {n for n, e in command.refresh.items() if (epochs or {}).get(n, 0) == e}
        result["epochs_raised"] = sorted(raised)
    return updates, result, raised


def _address(vip: str) -> Any:
    try:
        address = ipaddress.ip_address(vip)
    except ValueError:
        raise CommandError("invalid", f"placement {vip!r} is not an IP address") from None
    if str(address) != vip:  # the key is the address's canonical text everywhere
        raise CommandError("invalid", f"placement {vip!r} is not written as {address}")
    return address


def apply_released(
    assignments: Mapping[str, Assignment], node: str, vips: list[str]
) -> tuple[dict[str, Assignment], list[str]]:
    """The assignments an old owner's acknowledgement changes, and the VIPs it released."""
    updates = {}
    for vip in vips:
        current = assignments.get(vip)
        if current is not None and current.releasing == node:
            updates[vip] = current.model_copy(update={"releasing": None})
    return updates, list(updates)


def check_drain(node: str, members: Mapping[str, Any]) -> None:
    if node not in members:
        raise CommandError("not_found", f"node {node!r} is not a member that has reported")


class Liveness:
    """The leader's view of which nodes renew: last time (its own clock) each renewal changed."""

    def __init__(self, dead_after: float) -> None:
        self.dead_after = dead_after
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}
        # Since when each node has been renewing without a gap, in the same incarnation.
        self._since: dict[str, float] = {}

    def reset(
        self, now: float, renewals: Mapping[str, LeaseRenewal], seen: Liveness | None = None
    ) -> None:
        """A new leader (rule 5): each node as `seen` observed its current renewal, else now."""
        known = seen._seen if seen is not None else {}
        self._seen = {}
        self._since = {}
        for node, renewal in renewals.items():
            mark, at = known.get(node, (renewal.mark(), now))
            self._seen[node] = (mark, at) if mark == renewal.mark() else (renewal.mark(), now)
            since = seen._since.get(node) if seen is not None else None
            self._since[node] = since if since is not None and mark == renewal.mark() else now

    def observe(self, now: float, renewals: Mapping[str, LeaseRenewal]) -> None:
        for node, renewal in renewals.items():
            seen = self._seen.get(node)
            if seen is None or seen[0] != renewal.mark():
                # A restart (new incarnation) or a gap past dead_after starts a new streak.
                if (
                    seen is None
                    or seen[0][0] != renewal.incarnation
                    or now - seen[1] > self.dead_after
                ):
                    self._since[node] = now
                self._seen[node] = (renewal.mark(), now)

    def settled(self, node: str, now: float, warmup: float) -> bool:
        """Alive, and renewing for `warmup` seconds without a gap (a node back from a restart
        loads its state and the leader's snapshot first: VIPs given to it then were lost
        again when it stalled doing so)."""
        since = self._since.get(node)
        return self.alive(node, now) and since is not None and now - since >= warmup

    def alive(self, node: str, now: float) -> bool:
        seen = self._seen.get(node)
        return seen is not None and now - seen[1] <= self.dead_after

    def age(self, node: str, now: float) -> float | None:
        seen = self._seen.get(node)
        return None if seen is None else now - seen[1]

    def marks(self) -> dict[str, tuple[int, int]]:
        return {node: mark for node, (mark, _) in self._seen.items()}
