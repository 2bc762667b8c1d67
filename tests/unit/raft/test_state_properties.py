"""Property tests for raft/state.py (and raft/ipam.py through it): determinism, the address
sharing invariant, dump/restore round trips, and order-independence of independent requests."""

from __future__ import annotations

import ipaddress
from itertools import combinations
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.commands import KNOWN_TYPES
from raft.state import ClusterState

# No example database: the tests must not write outside tests/unit/.
FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

V4_POOL = {"name": "v4", "addresses": ["192.0.2.0/29"], "default": True}
V4_EXTRA = {"name": "extra", "addresses": ["198.51.100.10-198.51.100.12"]}
V6_POOL = {"name": "v6", "addresses": ["2001:db8::/125"], "default": True}
SETUP = [{"v": 1, "type": "pool.put", "pool": pool} for pool in (V4_POOL, V4_EXTRA, V6_POOL)]

OWNERS = ["o1", "o2", "c1/ns/web", "c1/ns/dns"]
ADDRESSES = [
    "192.0.2.0",
    "192.0.2.1",
    "192.0.2.7",
    "198.51.100.11",
    "2001:db8::",
    "2001:db8::5",
    "203.0.113.9",  # outside every pool
]
PORTS = [
    {"port": 80, "protocol": "tcp"},
    {"port": 443, "protocol": "tcp"},
    {"port": 53, "protocol": "udp"},
    {"port": 53, "protocol": "tcp"},
]

owners = st.sampled_from(OWNERS)
# Weighted towards the interesting cases: owners sharing a key on the default pools.
maybe_address = st.sampled_from([None] * 6 + ADDRESSES)
maybe_pool = st.sampled_from([None] * 8 + ["v4", "extra", "v6", "ghost"])
maybe_family = st.sampled_from([None, None, "ipv4", "ipv6"])
maybe_key = st.sampled_from([None, "k1", "k1", "k1", "k2"])
port_lists = st.lists(
    st.sampled_from(PORTS), max_size=2, unique_by=lambda p: (p["port"], p["protocol"])
)
service_port_lists = st.lists(
    st.sampled_from(PORTS), min_size=1, max_size=2, unique_by=lambda p: (p["port"], p["protocol"])
)


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


@st.composite
def allocation_creates(draw: st.DrawFn) -> dict[str, Any]:
    address = draw(maybe_address)
    request = _without_none(
        {
            "owner": draw(owners),
            "address": address,
            "pool": draw(maybe_pool),
            "ip_family": draw(maybe_family) if address is None else None,
            "sharing_key": draw(maybe_key),
            "ports": draw(port_lists),
        }
    )
    return {"v": 1, "type": "allocation.create", "request": request}


@st.composite
def service_puts(draw: st.DrawFn) -> dict[str, Any]:
    vip = draw(maybe_address)
    spec = _without_none(
        {
            "id": draw(owners),
            "vip": vip,
            "pool": draw(maybe_pool),
            "ip_family": draw(maybe_family) if vip is None else None,
            "sharing_key": draw(maybe_key),
            "ports": draw(service_port_lists),
        }
    )
    return {"v": 1, "type": "service.put", "service": spec}


releases = owners.map(lambda o: {"v": 1, "type": "allocation.delete", "owner": o})
service_deletes = owners.map(lambda o: {"v": 1, "type": "service.delete", "id": o})

# Creates twice as likely as deletes, so that states fill up and sharing happens.
allocation_commands = st.one_of(
    allocation_creates(),
    allocation_creates(),
    service_puts(),
    service_puts(),
    releases,
    service_deletes,
)

pool_puts = st.builds(
    lambda name, addresses, default, avoid: {
        "v": 1,
        "type": "pool.put",
        "pool": {
            "name": name,
            "addresses": addresses,
            "default": default,
            "avoid_buggy_ips": avoid,
        },
    },
    st.sampled_from(["v4", "extra", "v6", "new"]),
    st.lists(
        st.sampled_from(
            [
                "192.0.2.0/29",
                "192.0.2.0/30",
                "192.0.2.4-192.0.2.6",
                "198.51.100.10",
                "203.0.113.0/30",
                "2001:db8::/125",
                "2001:db8::/126",
            ]
        ),
        min_size=1,
        max_size=2,
        unique=True,
    ),
    st.booleans(),
    st.booleans(),
)
pool_deletes = st.sampled_from(["v4", "extra", "v6", "new"]).map(
    lambda n: {"v": 1, "type": "pool.delete", "name": n}
)
member_reports = st.builds(
    lambda node, at: {
        "v": 1,
        "type": "member.report",
        "report": {
            "node": node,
            "raft_address": "192.0.2.1:7001",
            "version": "1",
            "started_at": 0.0,
            "reported_at": at,
        },
    },
    st.sampled_from(["lb1", "lb2", "lb3"]),
    st.floats(min_value=0, max_value=1e9, allow_nan=False),
)
oddities = st.sampled_from(
    [
        {"v": 2, "type": "pool.put", "pool": V4_POOL},
        {"v": 1, "type": "lease.renew"},
        {"v": 1, "type": "allocation.create", "request": {"owner": ""}},
        "not a command",
    ]
)
simple_commands = st.one_of(allocation_commands, pool_puts, pool_deletes, member_reports)
all_commands = st.one_of(
    simple_commands,
    oddities,
    st.lists(simple_commands, min_size=1, max_size=4).map(
        lambda cs: {"v": 1, "type": "batch", "commands": cs}
    ),
)


def fresh_state() -> ClusterState:
    state = ClusterState()
    for command in SETUP:
        assert state.apply(command)["ok"]
    return state


def check_invariants(state: ClusterState) -> None:
    # The address index is exactly what the allocations say.
    index: dict[Any, set[str]] = {}
    for owner, allocation in state.allocations.items():
        assert allocation.owner == owner
        index.setdefault(allocation.address, set()).add(owner)
    assert dict(state.by_address) == index
    # The incremental address index (and its rollbacks) equals one built from scratch.
    assert state.index.summary() == ClusterState.from_data(state.to_data()).index.summary()
    # Never two owners on one address unless they share a key and use disjoint ports.
    for address, holders in index.items():
        for a, b in combinations(sorted(holders), 2):
            first, second = state.allocations[a], state.allocations[b]
            assert first.sharing_key is not None, (address, a, b)
            assert first.sharing_key == second.sharing_key, (address, a, b)
            assert not set(first.ports) & set(second.ports), (address, a, b)
            assert first.pool == second.pool
    # Every allocation lies in (a usable part of) its pool; every service holds its address.
    for allocation in state.allocations.values():
        assert state.pools[allocation.pool].usable(allocation.address), allocation
    for service_id, service in state.services.items():
        assert state.allocations[service_id].address == service.address
        assert service.spec.id == service_id


# -- (1) determinism -----------------------------------------------------------------------------


@FAST
@given(st.lists(all_commands, max_size=25))
def test_same_commands_same_order_same_state(commands: list[Any]) -> None:
    a, b = fresh_state(), fresh_state()
    for command in commands:
        assert a.apply(command) == b.apply(command)
        assert a.to_data() == b.to_data()
    assert a == b
    assert a.revision == b.revision
    assert a.by_address == b.by_address


# -- (2) the sharing invariant -------------------------------------------------------------------


@FAST
@given(st.lists(allocation_commands, min_size=5, max_size=30))
def test_no_two_owners_share_an_address_unless_allowed(commands: list[dict[str, Any]]) -> None:
    state = fresh_state()
    for command in commands:
        before = state.to_data()
        result = state.apply(command)
        if not result["ok"]:
            assert state.to_data() == before, result
        check_invariants(state)


@FAST
@given(st.lists(all_commands, max_size=25))
def test_invariants_hold_with_pool_changes_and_batches(commands: list[Any]) -> None:
    state = fresh_state()
    for command in commands:
        before = state.to_data()
        result = state.apply(command)
        if not result["ok"]:
            assert state.to_data() == before, result
        check_invariants(state)


# -- (3) dump / restore --------------------------------------------------------------------------


@FAST
@given(st.lists(all_commands, max_size=25), st.lists(allocation_commands, max_size=8))
def test_to_data_from_data_round_trip(commands: list[Any], after: list[dict[str, Any]]) -> None:
    state = fresh_state()
    for command in commands:
        state.apply(command)
    restored = ClusterState.from_data(state.to_data())
    assert restored == state
    assert restored.to_data() == state.to_data()
    assert restored.by_address == state.by_address
    # The restored state behaves exactly like the original from here on.
    for command in after:
        assert restored.apply(command) == state.apply(command)
    assert restored.to_data() == state.to_data()


@FAST
@given(st.lists(all_commands, max_size=15))
def test_copy_is_independent(commands: list[Any]) -> None:
    state = fresh_state()
    copy = state.copy()
    snapshot = copy.to_data()
    for command in commands:
        state.apply(command)
    assert copy.to_data() == snapshot
    check_invariants(copy)


# -- (4) independent requests commute ------------------------------------------------------------


@st.composite
def independent_requests(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Address-less requests of distinct owners (no sharing key) that fit the pools, in two
    orders."""
    count = draw(st.integers(min_value=1, max_value=16))
    requests = []
    for i in range(count):
        request = _without_none(
            {
                "owner": f"owner-{i}",
                "ip_family": draw(maybe_family),
                "ports": draw(port_lists),
            }
        )
        requests.append({"v": 1, "type": "allocation.create", "request": request})
    return requests, draw(st.permutations(requests))


DUAL_POOL = {
    "v": 1,
    "type": "pool.put",
    "pool": {"name": "dual", "addresses": ["192.0.2.0/28", "2001:db8::/124"]},
}


@FAST
@given(independent_requests())
def test_independent_requests_commute(
    orders: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    results = []
    for order in orders:
        state = ClusterState()
        assert state.apply(DUAL_POOL)["ok"]
        for command in order:
            result = state.apply(command)
            assert result["ok"], result
        results.append(state)
    first, second = results
    assert set(first.allocations) == set(second.allocations)
    assert len(first.allocations) == len(orders[0])
    addresses = {a.address for a in first.allocations.values()}
    assert len(addresses) == len(orders[0])
    assert addresses == {a.address for a in second.allocations.values()}
    pool = first.pools["dual"]
    for state in results:
        for request in orders[0]:
            owner = request["request"]["owner"]
            allocation = state.allocations[owner]
            assert pool.usable(allocation.address)
            family = request["request"].get("ip_family", "ipv4")
            assert allocation.address.version == (6 if family == "ipv6" else 4)
    # Lowest free first: the addresses used are the lowest of each family, without gaps.
    for version, base in ((4, "192.0.2.0"), (6, "2001:db8::1")):
        used = sorted(int(a) for a in addresses if a.version == version)
        start = int(ipaddress.ip_address(base))
        assert used == list(range(start, start + len(used)))


# -- apply never raises --------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@FAST
@given(
    st.fixed_dictionaries(
        {
            "v": st.just(1) | json_values,
            "type": st.sampled_from(sorted(KNOWN_TYPES)) | json_values,
        },
        optional={
            "pool": json_values,
            "request": json_values,
            "owner": json_values,
            "commands": json_values,
        },
    )
)
def test_apply_never_raises_on_any_json(command: dict[str, Any]) -> None:
    state = fresh_state()
    before = state.to_data()
    result = state.apply(command)
    assert isinstance(result, dict)
    if not result["ok"]:
        assert result["error"]["code"] in ("unsupported", "invalid", "not_found", "conflict")
        assert state.to_data() == before
