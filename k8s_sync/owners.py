"""Which node answers for a Service's VIP, shown on the Service; a move of it, an Event.

The most asked question of a layer-2 load balancer ("which node has my VIP?") is answered
where users look: the annotation `raftlb.io/vip-node` on the Service (`ADDRESS=NODE`, one per
address, comma-separated; `ecmp` for a BGP VIP announced by every able node, `-` while it
moves). A change of owner is an Event on the Service saying from where, to where and why, with
how long a failed owner had been silent. Read from `GET /v1/vips` every few seconds: one
request whatever the number of Services; only Services whose answer changed are patched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.bodies import VipEntry

log = logging.getLogger("raftlb.k8s")
ANNOTATION = "raftlb.io/vip-node"


@dataclass(frozen=True)
class Move:
    """A VIP given to another node, as an Event on its Service says it."""

    key: str
    kind: str
    reason: str
    message: str


def where(entry: VipEntry) -> str:
    """What the annotation says of one VIP."""
    if entry.announce == "bgp":
        return "ecmp"
    return entry.node or "-"


def annotation(entries: Iterable[VipEntry]) -> str:
    return ",".join(f"{e.address}={where(e)}" for e in sorted(entries, key=lambda e: e.address))


def move_of(key: str, old: VipEntry, new: VipEntry, held_by: str | None) -> Move | None:
    """The Event for `new` if its owner changed since `old` (a higher epoch, another node);
    `held_by`: the node that answered for it last (a planned move passes through no node)."""
    if new.epoch is None or old.epoch is None or new.epoch <= old.epoch:
        return None
    if new.node is None or new.announce == "bgp":
        return None  # released, on its way: said once it has arrived
    before = held_by or new.previous or old.node
    if before is None or before == new.node:
        return None  # a new VIP, or taken back by its owner
    text = f"VIP {new.address} moved {before} -> {new.node}"
    if new.reason == "dead":
        silent = f", {before} silent for {new.dead_for:.2f} s" if new.dead_for else ""
        return Move(key, "Warning", "VIPFailover", f"{text}: {before} stopped renewing{silent}")
    return Move(key, "Normal", "VIPMoved", f"{text} ({new.reason or 'rebalance'})")


class OwnerTracker:
    """Keeps the annotation current and reports moves. `poll(vips, services)` with every VIP
    entry and this sync's Services by key (namespace/name -> (service object, addresses));
    `patch(service, value)` and `event(move, service)` are the Kubernetes side. The first
    poll only learns (a restarted sync reports no old moves)."""

    def __init__(
        self,
        patch: Callable[[Mapping[str, Any], str], None],
        event: Callable[[Move, Mapping[str, Any]], None],
    ) -> None:
        self.patch = patch
        self.event = event
        self._last: dict[str, VipEntry] | None = None
        self._held: dict[str, str] = {}  # address -> the node that answered for it last
        self.patched = 0

    def poll(
        self,
        vips: Iterable[VipEntry],
        services: Mapping[str, tuple[Mapping[str, Any], Iterable[str]]],
    ) -> None:
        now = {v.address: v for v in vips}
        last, self._last = self._last, now
        for key, (service, addresses) in services.items():
            entries = [now[a] for a in addresses if a in now]
            if not entries:
                continue
            value = annotation(entries)
            current = ((service.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
            if current != value:
                try:
                    self.patch(service, value)
                    self.patched += 1
                except Exception as exc:  # the next poll tries again
                    what = f"{key}: {ANNOTATION}"
                    log.warning("%s not updated (%s); retrying at the next poll", what, exc)
            for entry in entries:
                old = last.get(entry.address) if last is not None else None
                held_by = self._held.get(entry.address)
                if entry.node is not None:
                    self._held[entry.address] = entry.node
                move = move_of(key, old, entry, held_by) if old is not None else None
                if move is not None:
                    log.info("%s: %s", key, move.message)
                    self.event(move, service)
        for address in set(self._held) - set(now):
            del self._held[address]
