"""Address management: pure decisions over pools and allocations.

These functions never mutate what they are given; the replicated state applies their answers.
Because they run inside Raft commands, every node reaches the same answer from the same state,
and two clients can never be handed the same address (unless they share it on purpose, under the
same sharing key and with disjoint ports).

Rules:
- An owner key holds at most one allocation; asking again with a compatible request returns it.
- A specific address must lie in a pool (the named one, if a pool is named too).
- Without an address, the named pool is used, else the default pool of the family, else the only
  pool of that family; the lowest free address wins, so allocation is deterministic.
- With a sharing key and no address, an address already shared under that key is reused when the
  ports do not clash.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Set

from appliance.model import (
    Allocation,
    AllocationRequest,
    IPAddress,
    IPFamily,
    Pool,
    family_of,
)
from raft.commands import CommandError

AddressIndex = Mapping[IPAddress, Set[str]]


def check_pool(
    pool: Pool, pools: Mapping[str, Pool], allocations: Mapping[str, Allocation]
) -> None:
    """Refuse a pool (new or changed) that overlaps another, doubles a default, or strands an
    allocation outside its new ranges."""
    for other in pools.values():
        if other.name == pool.name:
            continue
        overlap = pool.overlaps(other)
        if overlap:
            raise CommandError(
                "conflict",
                f"pool {pool.name!r}: {overlap}",
                field="addresses",
                value=pool.addresses,
            )
        if pool.default and other.default and pool.families() & other.families():
            raise CommandError(
                "conflict",
                f"pool {other.name!r} is already the default for "
                f"{', '.join(sorted(pool.families() & other.families()))}",
                field="default",
                value=True,
            )
    stranded = sorted(
        (a for a in allocations.values() if a.pool == pool.name and not pool.usable(a.address)),
        key=lambda a: a.owner,
    )
    if stranded:
        names = ", ".join(f"{a.address} ({a.owner})" for a in stranded[:5])
        raise CommandError(
            "conflict",
            f"pool {pool.name!r} would no longer contain {len(stranded)} allocated address(es): "
            f"{names}; release them first",
            field="addresses",
            value=pool.addresses,
        )


def check_pool_delete(name: str, allocations: Mapping[str, Allocation]) -> None:
    users = sorted(a.owner for a in allocations.values() if a.pool == name)
    if users:
        raise CommandError(
            "conflict",
            f"pool {name!r} still has {len(users)} allocation(s) ({', '.join(users[:5])}); "
            "delete those services or allocations first",
        )


def allocate(
    request: AllocationRequest,
    pools: Mapping[str, Pool],
    allocations: Mapping[str, Allocation],
    by_address: AddressIndex,
) -> Allocation:
    """Decide the allocation for `request`. Raise CommandError when it cannot be served."""
    family = request.family()
    pool = _choose_pool(request, family, pools)
    existing = allocations.get(request.owner)

    def build(address: IPAddress) -> Allocation:
        return Allocation(
            owner=request.owner,
            address=address,
            pool=pool.name,
            sharing_key=request.sharing_key,
            ports=sorted(set(request.ports), key=lambda p: (p.protocol, p.port)),
        )

    if (
        existing is not None
        and existing.pool == pool.name
        and family_of(existing.address) == family
        and request.address in (None, existing.address)
        and pool.usable(existing.address)
        and _sharing_problem(existing.address, request, allocations, by_address) is None
    ):
        return build(existing.address)

    if request.address is not None:
        problem = _sharing_problem(request.address, request, allocations, by_address)
        if problem:
            raise CommandError("conflict", problem, field="address", value=str(request.address))
        return build(request.address)

    if request.sharing_key is not None:
        shared = sorted(
            (
                a.address
                for a in allocations.values()
                if a.pool == pool.name
                and a.sharing_key == request.sharing_key
                and a.owner != request.owner
                and family_of(a.address) == family
            ),
            key=int,
        )
        for address in shared:
            if _sharing_problem(address, request, allocations, by_address) is None:
                return build(address)

    free = _first_free(pool, family, request.owner, by_address)
    if free is None:
        used = sum(
            1
            for address, owners in by_address.items()
            if owners - {request.owner} and pool.contains(address) and family_of(address) == family
        )
        raise CommandError(
            "exhausted",
            f"pool {pool.name!r} has no free {family} address ({used} of {pool.size(family)} "
            "in use); add addresses to the pool or release some",
            field="pool",
            value=pool.name,
        )
    return build(free)


def _choose_pool(request: AllocationRequest, family: IPFamily, pools: Mapping[str, Pool]) -> Pool:
    if request.address is not None:
        holders = [p for p in pools.values() if p.usable(request.address)]
        if not holders:
            raise CommandError(
                "invalid",
                f"address {request.address} is outside every pool",
                field="address",
                value=str(request.address),
            )
        pool = holders[0]
        if request.pool is not None and request.pool != pool.name:
            raise CommandError(
                "invalid",
                f"address {request.address} is in pool {pool.name!r}, not {request.pool!r}",
                field="pool",
                value=request.pool,
            )
        return pool
    if request.pool is not None:
        pool_or_none = pools.get(request.pool)
        if pool_or_none is None:
            raise CommandError(
                "not_found",
                f"pool {request.pool!r} does not exist",
                field="pool",
                value=request.pool,
            )
        if family not in pool_or_none.families():
            raise CommandError(
                "invalid",
                f"pool {request.pool!r} has no {family} addresses",
                field="ip_family",
                value=str(family),
            )
        return pool_or_none
    of_family = sorted((p for p in pools.values() if family in p.families()), key=lambda p: p.name)
    defaults = [p for p in of_family if p.default]
    if defaults:
        return defaults[0]
    if len(of_family) == 1:
        return of_family[0]
    if not of_family:
        raise CommandError(
            "invalid", f"no pool has {family} addresses", field="ip_family", value=str(family)
        )
    raise CommandError(
        "invalid",
        f"no pool named and no default {family} pool among {[p.name for p in of_family]}; "
        "name a pool or mark one `default: true`",
        field="pool",
    )


def _sharing_problem(
    address: IPAddress,
    request: AllocationRequest,
    allocations: Mapping[str, Allocation],
    by_address: AddressIndex,
) -> str | None:
    others = sorted(by_address.get(address, set()) - {request.owner})
    for owner in others:
        other = allocations[owner]
        if request.sharing_key is None or other.sharing_key != request.sharing_key:
            return f"address {address} is taken by {owner!r} (no common sharing key)"
        clash = sorted(set(other.ports) & set(request.ports), key=lambda p: (p.protocol, p.port))
        if clash:
            return (
                f"address {address} is shared with {owner!r}, which already uses "
                f"{', '.join(str(p) for p in clash)}"
            )
    return None


def _first_free(
    pool: Pool, family: IPFamily, owner: str, by_address: AddressIndex
) -> IPAddress | None:
    for first, last in sorted(pool.blocks(), key=lambda block: int(block[0])):
        if family_of(first) != family:
            continue
        value = int(first)
        while value <= int(last):
            address = ipaddress.ip_address(value)
            if pool.usable(address) and not (by_address.get(address, set()) - {owner}):
                return address
            value += 1
    return None
