"""IPAM and the replicated state at size: work per command independent of the state's size,
large IPv6 pools, many-block pools, and the indexed allocator against a brute-force model.

The work-count tests count Python function calls (a profiler hook), not time: the count is the
same on an idle and on a loaded machine, and it grows with the work an implementation does,
whatever its data structures.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.cluster import ReplicatedState
from raft.state import ClusterState
from tests.support.workcount import calls

FAST = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def pool(name: str, *addresses: str, **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "pool.put",
        "pool": {"name": name, "addresses": list(addresses), **extra},
    }


def service(i: int, backends: int = 10, **spec: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "service.put",
        "service": {
            "id": f"prod/ns/svc-{i}",
            "ports": [
                {
                    "port": 80,
                    "backends": [
                        {"address": f"2001:db8:2::{b + 1:x}", "port": 30000 + i % 1000}
                        for b in range(backends)
                    ],
                }
            ],
            **spec,
        },
    }


def allocate(owner: str, **request: Any) -> dict[str, Any]:
    return {"v": 1, "type": "allocation.create", "request": {"owner": owner, **request}}


def release(owner: str) -> dict[str, Any]:
    return {"v": 1, "type": "allocation.delete", "owner": owner}


def applied(state: ReplicatedState | ClusterState, command: dict[str, Any]) -> Any:
    if isinstance(state, ReplicatedState):
        result = state.apply(command, _doApply=True)  # as pysyncobj applies a committed entry
    else:
        result = state.apply(command)
    assert result["ok"], result
    return result["value"]


# -- work per command ----------------------------------------------------------------------------


def test_the_5000th_service_costs_what_the_10th_does() -> None:
    """Writing a service and reading the state after it: the same work at 10 and at 5,000
    services (the allocator walked the pool address by address and each first read after an
    apply copied the whole state: 550,812 and 450,012 calls at 5,000 services, 1,912 and 912
    at 10)."""
    state = ReplicatedState()
    applied(state, pool("v6", "2001:db8:100::/100", default=True))
    work: dict[int, tuple[int, int]] = {}
    for i in range(1, 5001):
        command = service(i, ip_family="ipv6")
        if i in (10, 5000):
            work[i] = (calls(lambda c=command: applied(state, c)), calls(state.view))
        else:
            applied(state, command)
            state.view()
    (put_10, view_10), (put_5000, view_5000) = work[10], work[5000]
    # O(log n) at most: the binary search over the allocated addresses (a sorted list) adds a
    # few calls per doubling of the state (78 from 10 to 5,000 services, about 9 doublings).
    assert put_5000 - put_10 <= 12 * math.log2(5000 / 10), work
    assert view_5000 == view_10, work
    assert len(state.view().services) == 5000


def test_allocation_in_a_pool_of_many_blocks_costs_what_it_does_in_one() -> None:
    """A pool written as 1,000 single addresses: the 900th allocation (899 full blocks before
    the first free one) costs what the 10th does."""
    addresses = [str(ipaddress.IPv6Address("2001:db8:5::") + 2 * i) for i in range(1000)]
    state = ClusterState()
    applied(state, pool("singles", *addresses, default=True))
    work = {}
    for i in range(1, 901):
        command = allocate(f"o{i}", ip_family="ipv6")
        if i in (10, 900):
            work[i] = calls(lambda c=command: applied(state, c))
        else:
            applied(state, command)
    assert work[900] <= work[10] * 1.25, work
    assert state.allocations["o900"].address == ipaddress.IPv6Address(addresses[899])


def test_a_renewal_costs_the_same_whatever_the_state() -> None:
    def renewal(seq: int) -> dict[str, Any]:
        return {
            "v": 1,
            "type": "lease.renew",
            "renewal": {"node": "n1", "incarnation": 1, "seq": seq, "sent_at": float(seq)},
        }

    small, large = ReplicatedState(), ReplicatedState()
    for state, count in ((small, 10), (large, 3000)):
        applied(state, pool("v6", "2001:db8:100::/100", default=True))
        for i in range(count):
            applied(state, service(i, backends=2, ip_family="ipv6"))
        applied(state, renewal(1))
    cost = [calls(lambda s=s: (applied(s, renewal(2)), s.view())) for s in (small, large)]
    assert cost[1] == cost[0], cost


# -- large and many-block pools ------------------------------------------------------------------


def test_ipv6_slash_64_fills_holes_lowest_first() -> None:
    state = ClusterState()
    applied(state, pool("v6", "2001:db8:0:1::/64", default=True))
    base = ipaddress.IPv6Address("2001:db8:0:1::1")  # its ::0 is the subnet-router anycast
    for i in range(1000):
        value = applied(state, allocate(f"o{i}", ip_family="ipv6"))
        assert value["allocation"]["address"] == str(base + i)
    for i in (999, 3, 500, 0):
        applied(state, release(f"o{i}"))
    got = [applied(state, allocate(f"n{i}", ip_family="ipv6")) for i in range(5)]
    assert [g["allocation"]["address"] for g in got] == [
        str(base + i) for i in (0, 3, 500, 999, 1000)
    ]
    # The top of the /64, asked for by address, and the exhaustion figure of a /64.
    top = "2001:db8:0:1:ffff:ffff:ffff:ffff"
    assert applied(state, allocate("top", address=top))["allocation"]["address"] == top
    assert state.index.used_in_pool("v6", 6) == 1002


def test_every_address_of_a_many_block_pool_then_exhausted() -> None:
    blocks = [
        "192.0.2.0/30",
        "192.0.2.9",
        "192.0.2.250-192.0.2.255",
        "198.51.100.255-198.51.101.1",
        "203.0.113.128/31",
    ]
    for avoid in (False, True):
        state = ClusterState()
        applied(state, pool("p", *blocks, default=True, avoid_buggy_ips=avoid))
        expected = [
            a
            for text in blocks
            for a in _addresses(text)
            if not (avoid and int(a) % 256 in (0, 255))
        ]
        got = []
        for i in range(len(expected)):
            got.append(applied(state, allocate(f"o{i}"))["allocation"]["address"])
        assert got == [str(a) for a in sorted(expected)]
        result = state.apply(allocate("one-more"))
        assert result["error"]["code"] == "exhausted", result
        assert f"({len(expected)} of " in result["error"]["message"]
        # Idempotent by owner: asking again returns the same address, full pool or not.
        assert applied(state, allocate("o3"))["allocation"]["address"] == got[3]


def _addresses(text: str) -> list[ipaddress.IPv4Address]:
    if "-" in text:
        first, last = (ipaddress.IPv4Address(t) for t in text.split("-"))
        return [ipaddress.IPv4Address(v) for v in range(int(first), int(last) + 1)]
    return list(ipaddress.ip_network(text)) if "/" in text else [ipaddress.IPv4Address(text)]


# -- the indexed allocator against a brute-force model -------------------------------------------

BLOCK_CHOICES = [
    "192.0.2.0/30",
    "192.0.2.4",
    "192.0.2.254-192.0.3.1",
    "192.0.3.250-192.0.3.255",
    "192.0.4.0/29",
    "192.0.5.255",
    "192.0.6.1-192.0.6.3",
]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], bool, list[tuple[str, int]]]:
    blocks = draw(st.lists(st.sampled_from(BLOCK_CHOICES), min_size=1, max_size=6, unique=True))
    avoid = draw(st.booleans())
    steps = draw(
        st.lists(st.tuples(st.sampled_from(["alloc", "alloc", "release"]), st.integers(0, 12)))
    )
    return blocks, avoid, steps


@FAST
@given(scenarios())
def test_lowest_free_address_matches_a_brute_force_walk(
    scenario: tuple[list[str], bool, list[tuple[str, int]]],
) -> None:
    blocks, avoid, steps = scenario
    state = ClusterState()
    applied(state, pool("p", *blocks, default=True, avoid_buggy_ips=avoid))
    usable = sorted(
        {a for text in blocks for a in _addresses(text)}
        - (
            {a for text in blocks for a in _addresses(text) if int(a) % 256 in (0, 255)}
            if avoid
            else set()
        )
    )
    held: dict[str, ipaddress.IPv4Address] = {}
    for action, number in steps:
        owner = f"o{number}"
        if action == "release":
            result = state.apply(release(owner))
            assert result["ok"] is (owner in held)
            held.pop(owner, None)
            continue
        taken = set(held.values()) - ({held[owner]} if owner in held else set())
        model = held.get(owner) or next((a for a in usable if a not in taken), None)
        result = state.apply(allocate(owner))
        if model is None:
            assert result["error"]["code"] == "exhausted"
            continue
        assert result["value"]["allocation"]["address"] == str(model)
        held[owner] = model
    assert state.index.summary() == ClusterState.from_data(state.to_data()).index.summary()
