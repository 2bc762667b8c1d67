"""Writing a sync pass's plans to the appliance: in batches through `POST /v1/apply`.

Thousands of Services at a cold start become a few dozen requests (one Raft commit each)
instead of one request per Service, split to the API's limits (`appliance.limits`: items and
bytes per request). A batch is all or nothing, so one Service the appliance refuses (its pool
is exhausted, its address is taken) would hold back the others: such a batch is written again
one item at a time, and only the refused item fails, with the appliance's reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from appliance.apierror import ApiError
from appliance.bodies import ServiceApplied, ServiceDeleted
from appliance.client import ApiClient
from appliance.limits import APPLY_MAX_BYTES, APPLY_MAX_ITEMS
from appliance.model import Service, ServiceSpec
from k8s_sync.plan import Plan

log = logging.getLogger("raftlb.k8s")

# Refusals that concern one item, not the request: retried item by item.
_ITEM_REFUSALS = frozenset({404, 409, 413, 422})
# What a batch body costs beyond its items (keys, brackets), with margin.
_OVERHEAD = 256


@dataclass
class Outcome:
    """What the appliance did with one Service's plan."""

    applied: dict[str, Service] = field(default_factory=dict)  # id -> as stored, with address
    refused: list[tuple[str, str]] = field(default_factory=list)  # (id, the appliance's reason)
    deleted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Item:
    key: str
    spec: ServiceSpec | None  # a put, or
    delete: str | None  # a delete
    size: int


def batches(
    items: Sequence[_Item], max_items: int = APPLY_MAX_ITEMS, max_bytes: int = APPLY_MAX_BYTES
) -> Iterator[list[_Item]]:
    """Consecutive runs of items within both limits (an item alone is always one batch)."""
    batch: list[_Item] = []
    size = _OVERHEAD
    for item in items:
        if batch and (len(batch) >= max_items or size + item.size > max_bytes):
            yield batch
            batch, size = [], _OVERHEAD
        batch.append(item)
        size += item.size
    if batch:
        yield batch


def items_of(plans: Iterable[tuple[str, Plan]]) -> list[_Item]:
    out = []
    for key, plan in plans:
        for spec in plan.puts:
            size = len(json.dumps(spec.model_dump(mode="json"))) + 2
            out.append(_Item(key, spec, None, size))
        for sid in plan.deletes:
            out.append(_Item(key, None, sid, len(sid) + 4))
    return out


class Writer:
    def __init__(self, appliance: ApiClient) -> None:
        self.appliance = appliance
        self.requests = 0
        self.fallbacks = 0

    def write(self, plans: Iterable[tuple[str, Plan]]) -> dict[str, Outcome]:
        """Carry the plans out; ApiUnreachable and other failures propagate (retry later)."""
        outcomes: dict[str, Outcome] = {}
        for batch in batches(items_of(plans)):
            for item in batch:
                outcomes.setdefault(item.key, Outcome())
            try:
                self._batch(batch, outcomes)
            except ApiError as exc:
                if exc.status not in _ITEM_REFUSALS:
                    raise
                self.fallbacks += 1
                log.info(
                    "a batch of %d change(s) was refused (%s): writing them one by one",
                    len(batch),
                    exc,
                )
                for item in batch:
                    self._one(item, outcomes[item.key])
        return outcomes

    def _batch(self, batch: list[_Item], outcomes: dict[str, Outcome]) -> None:
        puts = [i for i in batch if i.spec is not None]
        deletes = [i for i in batch if i.delete is not None]
        self.requests += 1
        answer = self.appliance.apply(
            services=[i.spec for i in puts if i.spec is not None],
            delete_services=[i.delete for i in deletes if i.delete is not None],
        )
        results = answer.results
        if len(results) != len(batch):
            raise ApiError(
                0, "bad_response", f"/v1/apply answered {len(results)} results for {len(batch)}"
            )
        for item, result in zip([*puts, *deletes], results, strict=True):
            outcome = outcomes[item.key]
            if item.spec is not None and isinstance(result, ServiceApplied):
                # The spec sent is the spec stored: keep that one, not a second parsed copy.
                address = result.service.address
                outcome.applied[item.spec.id] = Service(spec=item.spec, address=address)
            elif item.delete is not None and isinstance(result, ServiceDeleted):
                outcome.deleted.append(item.delete)
            else:
                raise ApiError(0, "bad_response", f"/v1/apply answered {result!r} for {item.key}")

    def _one(self, item: _Item, outcome: Outcome) -> None:
        self.requests += 1
        if item.spec is not None:
            try:
                outcome.applied[item.spec.id] = self.appliance.put_service(item.spec)
            except ApiError as exc:
                if exc.status not in (409, 422):
                    raise
                outcome.refused.append((item.spec.id, exc.message))
        elif item.delete is not None:
            try:
                self.appliance.delete_service(item.delete)
            except ApiError as exc:
                if exc.status != 404:  # already gone (another replica, or a retry): done
                    raise
            outcome.deleted.append(item.delete)
