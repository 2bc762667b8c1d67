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
- A preferred address (`prefer`) is taken instead when it is usable in that pool and free (or
  shareable under the request's key); otherwise it is ignored, never an error. An allocation the
  owner already holds is kept: a preference never moves a VIP.
- With a sharing key and no address, an address already shared under that key is reused when the
  ports do not clash.

Every decision costs O(log n) in the allocations and pool blocks, whatever the pool's size (an
IPv6 /64 is never enumerated): the questions go to `raft.ipam_index.AddressIndex`, which the
state keeps up to date.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Mapping, Set

from appliance.model import (
    Allocation,
    AllocationRequest,
    IPAddress,
    IPFamily,
    Pool,
    address_from_int,
    family_of,
)
from raft.commands import CommandError
from raft.ipam_index import AddressIndex

AddressOwners = Mapping[IPAddress, Set[str]]


def _version(family: IPFamily) -> int:
    return 4 if family == IPFamily.IPV4 else 6


def check_pool(
    pool: Pool, old: Pool | None, index: AddressIndex, by_address: AddressOwners
) -> None:
    """Refuse a pool (new or changed) that overlaps another, doubles a default, or strands an
    allocation outside its new ranges. `index` must not hold the pool's old blocks any more."""
    for family in sorted(pool.families()):
        version = _version(family)
        for first, last in zip(*pool.sorted_blocks(family), strict=True):
            hit = index.overlap(version, first, last)
            if hit is not None:
                make = address_from_int(version)
                raise CommandError(
                    "conflict",
                    f"pool {pool.name!r}: {make(first)}-{make(last)} overlaps "
                    f"{make(hit[0])}-{make(hit[1])} of pool {hit[2]!r}",
                    field="addresses",
                    value=pool.addresses,
                )
    if pool.default:
        for family in sorted(pool.families()):
            others = sorted(index.defaults_of[_version(family)] - {pool.name})
            if others:
                raise CommandError(
                    "conflict",
                    f"pool {others[0]!r} is already the default for {family}",
                    field="default",
                    value=True,
                )
    if old is not None:
        _check_stranded(pool, old, index, by_address)


def _gaps(
    old: tuple[list[int], list[int]], new: tuple[list[int], list[int]]
) -> list[tuple[int, int]]:
    """The parts of the old blocks that the new blocks do not cover (both sorted, disjoint)."""
    out = []
    new_firsts, new_lasts = new
    j = 0
    for first, last in zip(*old, strict=True):
        start = first
        while j < len(new_firsts) and new_lasts[j] < start:
            j += 1
        k = j
        while start <= last:
            if k >= len(new_firsts) or new_firsts[k] > last:
                out.append((start, last))
                break
            if new_firsts[k] > start:
                out.append((start, new_firsts[k] - 1))
            start = max(start, new_lasts[k] + 1)
            k += 1
    return out


def _check_stranded(pool: Pool, old: Pool, index: AddressIndex, by_address: AddressOwners) -> None:
    limit = 5
    count, sample = 0, []
    for family in (IPFamily.IPV4, IPFamily.IPV6):
        version = _version(family)
        make = address_from_int(version)
        for first, last in _gaps(old.sorted_blocks(family), pool.sorted_blocks(family)):
            count += index.count_used(version, first, last)
            sample += [make(v) for v in index.used_between(version, first, last, limit)]
        if pool.avoid_buggy_ips and version == 4:
            for first, last in zip(*pool.sorted_blocks(family), strict=True):
                found = index.buggy_between(first, last, 1 << 62)
                count += len(found)
                sample += [make(v) for v in found[:limit]]
    if count:
        names = [
            f"{address} ({', '.join(sorted(by_address.get(address, ())))})"
            for address in sorted(sample, key=lambda a: (a.version, int(a)))[:limit]
        ]
        raise CommandError(
            "conflict",
            f"pool {pool.name!r} would no longer contain {count} allocated address(es): "
            f"{', '.join(names)}; release them first",
            field="addresses",
            value=pool.addresses,
        )


def check_pool_delete(name: str, index: AddressIndex) -> None:
    users = index.pool_owners(name)
    if users:
        first = heapq.nsmallest(5, users)
        raise CommandError(
            "conflict",
            f"pool {name!r} still has {len(users)} allocation(s) ({', '.join(first)}); "
            "delete those services or allocations first",
        )


def allocate(
    request: AllocationRequest,
    pools: Mapping[str, Pool],
    allocations: Mapping[str, Allocation],
    by_address: AddressOwners,
    index: AddressIndex,
) -> Allocation:
    """Decide the allocation for `request`. Raise CommandError when it cannot be served."""
    family = request.family()
    version = _version(family)
    pool = _choose_pool(request, family, pools, index)
    existing = allocations.get(request.owner)

    def build(address: IPAddress) -> Allocation:
        # From validated parts (the request and an address of the pool): no validation again.
        return Allocation.model_construct(
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

    prefer = request.prefer
    if (
        prefer is not None
        and family_of(prefer) == family
        and pool.usable(prefer)
        and _sharing_problem(prefer, request, allocations, by_address) is None
    ):
        return build(prefer)

    make = address_from_int(version)
    if request.sharing_key is not None:
        for value in index.shared_addresses(pool.name, request.sharing_key, version):
            address = make(value)
            if _sharing_problem(address, request, allocations, by_address) is None:
                return build(address)

    free = index.first_free(pool.name, version)
    # An address held by this owner alone is free for it too (at most one: its allocation).
    own = None
    if (
        existing is not None
        and family_of(existing.address) == family
        and set(by_address.get(existing.address, ())) == {request.owner}
        and pool.usable(existing.address)
    ):
        own = int(existing.address)
    candidates = [v for v in (free, own) if v is not None]
    if not candidates:
        used = index.used_in_pool(pool.name, version) - (own is not None)
        raise CommandError(
            "exhausted",
            f"pool {pool.name!r} has no free {family} address ({used} of {pool.size(family)} "
            "in use); add addresses to the pool or release some",
            field="pool",
            value=pool.name,
        )
    return build(make(min(candidates)))


def _choose_pool(
    request: AllocationRequest, family: IPFamily, pools: Mapping[str, Pool], index: AddressIndex
) -> Pool:
    version = _version(family)
    if request.address is not None:
        name = index.pool_at(version, int(request.address))
        holder = pools.get(name) if name is not None else None
        if holder is None or not holder.usable(request.address):
            raise CommandError(
                "invalid",
                _unusable(request.address, holder, pools),
                field="address",
                value=str(request.address),
            )
        if request.pool is not None and request.pool != holder.name:
            raise CommandError(
                "invalid",
                f"address {request.address} is in pool {holder.name!r}, not {request.pool!r}",
                field="pool",
                value=request.pool,
            )
        return holder
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
    defaults = index.defaults_of[version]
    if defaults:
        return pools[min(defaults)]
    of_family = index.pools_of[version]
    if len(of_family) == 1:
        return pools[next(iter(of_family))]
    if not of_family:
        raise CommandError(
            "invalid", f"no pool has {family} addresses", field="ip_family", value=str(family)
        )
    raise CommandError(
        "invalid",
        f"no pool named and no default {family} pool among {sorted(of_family)}; "
        "name a pool or mark one `default: true`",
        field="pool",
    )


def _unusable(address: IPAddress, holder: Pool | None, pools: Mapping[str, Pool]) -> str:
    """Why `address` cannot be asked for. Only on an error: scanning the pools is fine here."""
    if holder is not None:  # inside a block, so avoid_buggy_ips left it out
        return (
            f"address {address} is in pool {holder.name!r}, whose avoid_buggy_ips keeps the .0 "
            "and .255 addresses out (some clients drop them); ask for another address or set "
            "avoid_buggy_ips: false"
        )
    if address.version == 6:
        for pool in pools.values():
            for text in pool.addresses:
                if "/" in text and ipaddress.ip_network(text, strict=False)[0] == address:
                    return (
                        f"address {address} is the all-zeros address of {text} in pool "
                        f"{pool.name!r}, which routers answer as the subnet-router anycast "
                        "address: it is never a VIP; ask for another address"
                    )
    return f"address {address} is outside every pool"


def _sharing_problem(
    address: IPAddress,
    request: AllocationRequest,
    allocations: Mapping[str, Allocation],
    by_address: AddressOwners,
) -> str | None:
    others = sorted(set(by_address.get(address, ())) - {request.owner})
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
