"""Unit tests for raft/ipam.py, driven through ClusterState.apply as the replicated log would."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest

from raft.state import ClusterState

ip = ipaddress.ip_address


# -- command builders ----------------------------------------------------------------------------


def put_pool(name: str, *addresses: str, **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "pool.put",
        "pool": {"name": name, "addresses": list(addresses), **extra},
    }


def delete_pool(name: str) -> dict[str, Any]:
    return {"v": 1, "type": "pool.delete", "name": name}


def ports(*specs: int | str) -> list[dict[str, Any]]:
    """ports(80, "53/udp") -> [{"port": 80, "protocol": "tcp"}, {"port": 53, "protocol": "udp"}]"""
    out = []
    for spec in specs:
        number, _, protocol = str(spec).partition("/")
        out.append({"port": int(number), "protocol": protocol or "tcp"})
    return out


def allocate(owner: str, **request: Any) -> dict[str, Any]:
    return {"v": 1, "type": "allocation.create", "request": {"owner": owner, **request}}


def release(owner: str) -> dict[str, Any]:
    return {"v": 1, "type": "allocation.delete", "owner": owner}


def put_service(service_id: str, *port_numbers: int | str, **spec: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "service.put",
        "service": {"id": service_id, "ports": ports(*(port_numbers or (80,))), **spec},
    }


def delete_service(service_id: str) -> dict[str, Any]:
    return {"v": 1, "type": "service.delete", "id": service_id}


def report(node: str) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "member.report",
        "report": {
            "node": node,
            "raft_address": "192.0.2.1:7001",
            "version": "0.1.0",
            "started_at": 1.0,
            "reported_at": 2.0,
        },
    }


def batch(*commands: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "type": "batch", "commands": list(commands)}


# -- helpers -------------------------------------------------------------------------------------


def state_with(*commands: dict[str, Any]) -> ClusterState:
    state = ClusterState()
    for command in commands:
        ok(state, command)
    return state


def ok(state: ClusterState, command: dict[str, Any]) -> Any:
    result = state.apply(command)
    assert result["ok"] is True, result
    return result["value"]


def refused(state: ClusterState, command: dict[str, Any], code: str) -> dict[str, Any]:
    """Apply a command that must be refused with `code`, and check nothing changed."""
    before = state.to_data()
    revision = state.revision
    by_address = {a: set(o) for a, o in state.by_address.items()}
    index = state.index.summary()
    result = state.apply(command)
    assert result["ok"] is False, result
    assert result["error"]["code"] == code, result
    assert result["error"]["message"]
    assert state.to_data() == before
    assert state.revision == revision
    assert dict(state.by_address) == by_address
    assert state.index.summary() == index  # rolled back exactly
    return result["error"]


def address_of(state: ClusterState, command: dict[str, Any]) -> str:
    value = ok(state, command)
    if "allocation" in value:
        return value["allocation"]["address"]
    return value["service"]["address"]


def check_index(state: ClusterState) -> None:
    """The address index agrees with the allocations, and services with theirs."""
    index: dict[Any, set[str]] = {}
    for owner, allocation in state.allocations.items():
        assert allocation.owner == owner
        index.setdefault(allocation.address, set()).add(owner)
    assert dict(state.by_address) == index
    # The incremental address index (and its rollbacks) equals one built from scratch.
    assert state.index.summary() == ClusterState.from_data(state.to_data()).index.summary()
    for service_id, service in state.services.items():
        assert state.allocations[service_id].address == service.address


V4 = put_pool("v4", "192.0.2.0/29")


# -- allocation basics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addresses", "extra", "expected"),
    [
        (["192.0.2.0/29"], {}, ["192.0.2.0", "192.0.2.1", "192.0.2.2"]),
        (["192.0.2.0/24"], {"avoid_buggy_ips": True}, ["192.0.2.1", "192.0.2.2", "192.0.2.3"]),
        (
            ["192.0.2.10-192.0.2.11", "198.51.100.7"],
            {},
            ["192.0.2.10", "192.0.2.11", "198.51.100.7"],
        ),
        # An IPv6 CIDR skips its subnet-router anycast address; a range or a /127 does not.
        (["2001:db8::/64"], {}, ["2001:db8::1", "2001:db8::2", "2001:db8::3"]),
        (["2001:db8::-2001:db8::ff"], {}, ["2001:db8::", "2001:db8::1", "2001:db8::2"]),
        (
            ["2001:db8::/127", "2001:db8:1::/126"],
            {},
            ["2001:db8::", "2001:db8::1", "2001:db8:1::1"],
        ),
    ],
)
def test_lowest_free_address_in_order(
    addresses: list[str], extra: dict[str, Any], expected: list[str]
) -> None:
    state = state_with(put_pool("p", *addresses, **extra))
    family = "ipv6" if ":" in expected[0] else "ipv4"
    got = [address_of(state, allocate(f"o{i}", ip_family=family)) for i in range(len(expected))]
    assert got == expected
    check_index(state)


@pytest.mark.parametrize(
    "addresses",
    [
        ["192.0.2.100-192.0.2.101", "192.0.2.10-192.0.2.11"],
        ["198.51.100.0/30", "192.0.2.8/30"],
        ["192.0.2.200", "192.0.2.9"],
    ],
)
def test_lowest_free_address_whatever_the_block_order(addresses: list[str]) -> None:
    # "the lowest free address wins" (raft/ipam.py): not the first block as written.
    state = state_with(put_pool("p", *addresses))
    lowest = min(ipaddress.ip_network(a.split("-")[0]).network_address for a in addresses)
    assert address_of(state, allocate("o1")) == str(lowest)


def test_released_hole_is_filled_first() -> None:
    state = state_with(V4)
    for i in range(4):
        ok(state, allocate(f"o{i}"))
    ok(state, release("o1"))
    assert "o1" not in state.allocations
    assert ip("192.0.2.1") not in state.by_address
    assert address_of(state, allocate("o9")) == "192.0.2.1"
    assert address_of(state, allocate("o10")) == "192.0.2.4"
    check_index(state)


@pytest.mark.parametrize(
    ("addresses", "extra", "family", "capacity"),
    [
        (["192.0.2.0/30"], {}, "ipv4", 4),
        (["192.0.2.7"], {}, "ipv4", 1),
        (["192.0.2.254-192.0.2.255", "198.51.100.0"], {"avoid_buggy_ips": True}, "ipv4", 1),
        (["2001:db8::/126"], {}, "ipv6", 3),  # without its subnet-router anycast address
        (["192.0.2.0/30", "2001:db8::/127"], {}, "ipv6", 2),
    ],
)
def test_exhaustion(
    addresses: list[str], extra: dict[str, Any], family: str, capacity: int
) -> None:
    state = state_with(put_pool("p", *addresses, **extra))
    got = {address_of(state, allocate(f"o{i}", ip_family=family)) for i in range(capacity)}
    assert len(got) == capacity
    error = refused(state, allocate("one-too-many", ip_family=family), "exhausted")
    assert "'p'" in error["message"]
    assert error["field"] == "pool"
    # Asking again for an owner that already holds an address still works when full.
    assert address_of(state, allocate("o0", ip_family=family)) in got


def test_idempotent_by_owner() -> None:
    state = state_with(V4)
    first = ok(state, allocate("o1", sharing_key="k", ports=ports(80)))
    revision = state.revision
    second = ok(state, allocate("o1", sharing_key="k", ports=ports(80)))
    assert first == second
    assert second["allocation"]["address"] == "192.0.2.0"
    assert list(state.allocations) == ["o1"]
    assert dict(state.by_address) == {ip("192.0.2.0"): {"o1"}}
    assert state.revision == revision + 1
    # A new owner gets the next address, not the same one.
    assert address_of(state, allocate("o2")) == "192.0.2.1"


def test_owner_changing_ports_keeps_address() -> None:
    state = state_with(V4)
    assert address_of(state, allocate("o1", ports=ports(80))) == "192.0.2.0"
    value = ok(state, allocate("o1", ports=ports(443, 80, 443)))
    assert value["allocation"]["address"] == "192.0.2.0"
    # Ports are stored sorted and without duplicates.
    assert value["allocation"]["ports"] == [
        {"protocol": "tcp", "port": 80},
        {"protocol": "tcp", "port": 443},
    ]


@pytest.mark.parametrize(
    ("address", "pool", "code", "field"),
    [
        ("192.0.2.5", None, None, None),
        ("192.0.2.5", "v4", None, None),
        ("2001:db8::9", None, None, None),
        ("2001:db8::9", "v6", None, None),
        ("192.0.2.8", None, "invalid", "address"),
        ("203.0.113.1", None, "invalid", "address"),
        ("2001:db8:1::1", None, "invalid", "address"),
        ("192.0.2.5", "v6", "invalid", "pool"),
        ("192.0.2.5", "nope", "invalid", "pool"),
    ],
)
def test_specific_address(
    address: str, pool: str | None, code: str | None, field: str | None
) -> None:
    state = state_with(V4, put_pool("v6", "2001:db8::/120"))
    command = allocate("o1", address=address, pool=pool)
    if code is None:
        value = ok(state, command)
        assert value["allocation"]["address"] == address
        assert value["allocation"]["pool"] == ("v4" if "." in address else "v6")
        check_index(state)
    else:
        error = refused(state, command, code)
        assert error["field"] == field
        assert address in error["message"]


def test_specific_buggy_address_refused() -> None:
    state = state_with(put_pool("p", "192.0.2.0/24", avoid_buggy_ips=True))
    refused(state, allocate("o1", address="192.0.2.255"), "invalid")
    refused(state, allocate("o1", address="192.0.2.0"), "invalid")
    assert address_of(state, allocate("o1", address="192.0.2.254")) == "192.0.2.254"


def test_specific_address_taken() -> None:
    state = state_with(V4)
    ok(state, allocate("o1", address="192.0.2.3"))
    error = refused(state, allocate("o2", address="192.0.2.3"), "conflict")
    assert "'o1'" in error["message"]
    assert error["field"] == "address"
    # Without an address asked, the taken one is skipped.
    assert address_of(state, allocate("o2")) == "192.0.2.0"
    assert address_of(state, allocate("o3")) == "192.0.2.1"
    assert address_of(state, allocate("o4")) == "192.0.2.2"
    assert address_of(state, allocate("o5")) == "192.0.2.4"


def test_owner_moves_to_a_specific_address() -> None:
    state = state_with(V4)
    assert address_of(state, allocate("o1")) == "192.0.2.0"
    assert address_of(state, allocate("o1", address="192.0.2.6")) == "192.0.2.6"
    assert dict(state.by_address) == {ip("192.0.2.6"): {"o1"}}
    assert address_of(state, allocate("o2")) == "192.0.2.0"


@pytest.mark.parametrize(
    ("pool", "ip_family", "code", "field"),
    [
        ("nope", None, "not_found", "pool"),
        ("v4", "ipv6", "invalid", "ip_family"),
        ("v6", "ipv4", "invalid", "ip_family"),
    ],
)
def test_named_pool_problems(pool: str, ip_family: str | None, code: str, field: str) -> None:
    state = state_with(V4, put_pool("v6", "2001:db8::/120"))
    error = refused(state, allocate("o1", pool=pool, ip_family=ip_family), code)
    assert error["field"] == field


def test_no_pools_at_all() -> None:
    state = ClusterState()
    error = refused(state, allocate("o1"), "invalid")
    assert error["field"] == "ip_family"


# -- sharing -------------------------------------------------------------------------------------


def test_sharing_key_with_disjoint_ports_shares_one_address() -> None:
    state = state_with(V4)
    a = address_of(state, allocate("a", sharing_key="k", ports=ports(80)))
    b = address_of(state, allocate("b", sharing_key="k", ports=ports(443)))
    c = address_of(state, allocate("c", sharing_key="k", ports=ports("80/udp")))
    assert a == b == c == "192.0.2.0"
    assert state.by_address[ip(a)] == {"a", "b", "c"}
    check_index(state)


def test_same_key_clashing_ports_gets_another_address() -> None:
    state = state_with(V4)
    a = address_of(state, allocate("a", sharing_key="k", ports=ports(80, 443)))
    b = address_of(state, allocate("b", sharing_key="k", ports=ports(443)))
    assert (a, b) == ("192.0.2.0", "192.0.2.1")
    # A third one fits with b but not with a: it joins b.
    c = address_of(state, allocate("c", sharing_key="k", ports=ports(80)))
    assert c == "192.0.2.1"
    check_index(state)


def test_same_key_clashing_ports_on_asked_address_is_conflict() -> None:
    state = state_with(V4)
    ok(state, allocate("a", sharing_key="k", ports=ports(80), address="192.0.2.4"))
    error = refused(
        state,
        allocate("b", sharing_key="k", ports=ports(80, 8080), address="192.0.2.4"),
        "conflict",
    )
    assert "80/tcp" in error["message"]
    assert "'a'" in error["message"]
    # Disjoint ports on the asked address are fine.
    address = address_of(
        state, allocate("b", sharing_key="k", ports=ports(8080), address="192.0.2.4")
    )
    assert address == "192.0.2.4"


@pytest.mark.parametrize(
    ("first_key", "second_key"),
    [("k", "other"), ("k", None), (None, "k"), (None, None)],
)
def test_different_or_missing_key_refused(first_key: str | None, second_key: str | None) -> None:
    state = state_with(V4)
    ok(state, allocate("a", sharing_key=first_key, ports=ports(80), address="192.0.2.2"))
    error = refused(
        state,
        allocate("b", sharing_key=second_key, ports=ports(443), address="192.0.2.2"),
        "conflict",
    )
    assert "no common sharing key" in error["message"]
    # Without an address asked, b simply gets another one.
    assert address_of(state, allocate("b", sharing_key=second_key, ports=ports(443))) != "192.0.2.2"


def test_sharing_key_does_not_cross_pools_or_families() -> None:
    state = state_with(
        put_pool("a", "192.0.2.0/30"),
        put_pool("b", "198.51.100.0/30"),
        put_pool("six", "2001:db8::/126"),
    )
    x = address_of(state, allocate("x", pool="a", sharing_key="k", ports=ports(80)))
    y = address_of(state, allocate("y", pool="b", sharing_key="k", ports=ports(443)))
    z = address_of(state, allocate("z", pool="six", ip_family="ipv6", sharing_key="k"))
    assert (x, y, z) == ("192.0.2.0", "198.51.100.0", "2001:db8::1")


def test_shared_owner_changing_to_clashing_ports_moves() -> None:
    state = state_with(V4)
    ok(state, allocate("a", sharing_key="k", ports=ports(80)))
    ok(state, allocate("b", sharing_key="k", ports=ports(443)))
    moved = address_of(state, allocate("b", sharing_key="k", ports=ports(80)))
    assert moved == "192.0.2.1"
    assert dict(state.by_address) == {ip("192.0.2.0"): {"a"}, ip("192.0.2.1"): {"b"}}


def test_shared_owner_changing_key_moves() -> None:
    state = state_with(V4)
    ok(state, allocate("a", sharing_key="k", ports=ports(80)))
    ok(state, allocate("b", sharing_key="k", ports=ports(443)))
    assert address_of(state, allocate("b", sharing_key="j", ports=ports(443))) == "192.0.2.1"
    check_index(state)


def test_release_of_one_sharer_keeps_the_other() -> None:
    state = state_with(V4)
    ok(state, allocate("a", sharing_key="k", ports=ports(80)))
    ok(state, allocate("b", sharing_key="k", ports=ports(443)))
    ok(state, release("a"))
    assert dict(state.by_address) == {ip("192.0.2.0"): {"b"}}
    # The address is still held by b: an unrelated owner does not get it.
    assert address_of(state, allocate("c")) == "192.0.2.1"
    ok(state, release("b"))
    assert address_of(state, allocate("d")) == "192.0.2.0"


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (release("ghost"), "not_found"),
        (delete_service("ghost"), "not_found"),
        (delete_pool("ghost"), "not_found"),
    ],
)
def test_deleting_what_does_not_exist(command: dict[str, Any], code: str) -> None:
    state = state_with(V4, allocate("o1"))
    refused(state, command, code)


# -- IPv6 ----------------------------------------------------------------------------------------


def test_ipv6_slash_64_is_fast() -> None:
    state = state_with(put_pool("v6", "2001:db8:0:1::/64"))
    start = time.perf_counter()
    got = [address_of(state, allocate(f"o{i}", ip_family="ipv6")) for i in range(200)]
    elapsed = time.perf_counter() - start
    assert got[0] == "2001:db8:0:1::1"
    assert got[-1] == str(ip("2001:db8:0:1::") + 200)
    assert len(set(got)) == 200
    assert elapsed < 5
    # A specific address deep inside the /64.
    deep = "2001:db8:0:1:ffff:ffff:ffff:fffe"
    assert address_of(state, allocate("deep", address=deep)) == deep


def test_ipv6_family_defaults_to_ipv4_when_not_asked() -> None:
    state = state_with(put_pool("dual", "192.0.2.0/30", "2001:db8::/126"))
    assert address_of(state, allocate("a")) == "192.0.2.0"
    assert address_of(state, allocate("b", ip_family="ipv6")) == "2001:db8::1"
    assert address_of(state, put_service("s6", ip_family="ipv6")) == "2001:db8::2"
    assert address_of(state, put_service("s4")) == "192.0.2.1"


# -- default pool choice -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pools", "family", "expected"),
    [
        # The only pool of the family, default or not.
        ([put_pool("a", "192.0.2.0/30")], "ipv4", "192.0.2.0"),
        ([put_pool("a", "192.0.2.0/30"), put_pool("b", "2001:db8::/126")], "ipv6", "2001:db8::1"),
        # The default pool wins over others of the family.
        (
            [put_pool("a", "192.0.2.0/30"), put_pool("b", "198.51.100.0/30", default=True)],
            "ipv4",
            "198.51.100.0",
        ),
        (
            [
                put_pool("a", "2001:db8::/126", default=True),
                put_pool("b", "2001:db8:1::/126"),
                put_pool("c", "192.0.2.0/30", default=True),
            ],
            "ipv6",
            "2001:db8::1",
        ),
        # A default of the other family does not count.
        (
            [put_pool("a", "192.0.2.0/30", default=True), put_pool("b", "2001:db8::/126")],
            "ipv6",
            "2001:db8::1",
        ),
    ],
)
def test_default_pool_choice(pools: list[dict[str, Any]], family: str, expected: str) -> None:
    state = state_with(*pools)
    assert address_of(state, allocate("o1", ip_family=family)) == expected


@pytest.mark.parametrize(
    ("pools", "family", "field"),
    [
        ([put_pool("a", "192.0.2.0/30"), put_pool("b", "198.51.100.0/30")], "ipv4", "pool"),
        (
            [
                put_pool("a", "192.0.2.0/30", "2001:db8::/126"),
                put_pool("b", "2001:db8:1::/126"),
                put_pool("c", "198.51.100.0/30", default=True),
            ],
            "ipv6",
            "pool",
        ),
        ([put_pool("a", "192.0.2.0/30")], "ipv6", "ip_family"),
    ],
)
def test_default_pool_ambiguous_or_missing(
    pools: list[dict[str, Any]], family: str, field: str
) -> None:
    state = state_with(*pools)
    error = refused(state, allocate("o1", ip_family=family), "invalid")
    assert error["field"] == field
    # Naming a pool resolves it.
    if field == "pool":
        name = "b"
        assert ok(state, allocate("o1", ip_family=family, pool=name))["allocation"]["pool"] == name


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        (
            put_pool("a", "192.0.2.0/30", default=True),
            put_pool("b", "198.51.100.0/30", default=True),
            "conflict",
        ),
        (
            put_pool("a", "2001:db8::/126", default=True),
            put_pool("b", "2001:db8:1::/126", default=True),
            "conflict",
        ),
        (
            put_pool("a", "192.0.2.0/30", "2001:db8::/126", default=True),
            put_pool("b", "2001:db8:1::/126", default=True),
            "conflict",
        ),
        (
            put_pool("a", "192.0.2.0/30", default=True),
            put_pool("b", "2001:db8::/126", default=True),
            None,
        ),
        # Re-putting the default pool itself is fine.
        (
            put_pool("a", "192.0.2.0/30", default=True),
            put_pool("a", "192.0.2.0/29", default=True),
            None,
        ),
    ],
)
def test_one_default_pool_per_family(
    first: dict[str, Any], second: dict[str, Any], code: str | None
) -> None:
    state = state_with(first)
    if code is None:
        ok(state, second)
        assert state.pools[second["pool"]["name"]].default
    else:
        error = refused(state, second, code)
        assert error["field"] == "default"
        assert "'a'" in error["message"]


# -- pool changes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "new", "ok_expected"),
    [
        ("192.0.2.0/28", "192.0.2.8-192.0.2.20", False),
        ("192.0.2.0/28", "192.0.2.15", False),
        ("192.0.2.0/28", "192.0.2.0/24", False),
        ("2001:db8::/64", "2001:db8::/48", False),
        ("192.0.2.0/28", "192.0.2.16/28", True),
        ("192.0.2.0/28", "2001:db8::/64", True),
    ],
)
def test_overlapping_pools_refused(existing: str, new: str, ok_expected: bool) -> None:
    state = state_with(put_pool("a", existing))
    if ok_expected:
        ok(state, put_pool("b", new))
        assert set(state.pools) == {"a", "b"}
    else:
        error = refused(state, put_pool("b", new), "conflict")
        assert error["field"] == "addresses"
        assert "'a'" in error["message"]


@pytest.mark.parametrize(
    ("new_pool", "allowed"),
    [
        (put_pool("v4", "192.0.2.0/30"), False),
        (put_pool("v4", "192.0.2.6/31"), False),
        (put_pool("v4", "192.0.2.0-192.0.2.5"), True),
        (put_pool("v4", "192.0.2.0/28"), True),
        (put_pool("v4", "192.0.2.5"), True),
        (put_pool("v4", "2001:db8::/64"), False),
        (put_pool("v4", "192.0.2.0/29", avoid_buggy_ips=True), True),
    ],
)
def test_changing_a_pool_must_not_strand_allocations(
    new_pool: dict[str, Any], allowed: bool
) -> None:
    state = state_with(V4, allocate("o1", address="192.0.2.5"))
    if allowed:
        ok(state, new_pool)
        assert state.pools["v4"].addresses == new_pool["pool"]["addresses"]
    else:
        error = refused(state, new_pool, "conflict")
        assert "192.0.2.5 (o1)" in error["message"]
        assert error["field"] == "addresses"


def test_avoid_buggy_ips_on_a_pool_holding_dot_zero_refused() -> None:
    state = state_with(put_pool("p", "192.0.2.0/24"), allocate("o1"))
    assert state.allocations["o1"].address == ip("192.0.2.0")
    refused(state, put_pool("p", "192.0.2.0/24", avoid_buggy_ips=True), "conflict")


def test_shrinking_is_allowed_after_release() -> None:
    state = state_with(V4, allocate("o1", address="192.0.2.5"))
    ok(state, release("o1"))
    ok(state, put_pool("v4", "192.0.2.0/30"))
    refused(state, allocate("o1", address="192.0.2.5"), "invalid")


def test_deleting_a_pool_in_use_refused() -> None:
    state = state_with(V4, allocate("o1"), put_pool("other", "198.51.100.0/30"))
    error = refused(state, delete_pool("v4"), "conflict")
    assert "o1" in error["message"]
    ok(state, delete_pool("other"))
    ok(state, release("o1"))
    ok(state, delete_pool("v4"))
    assert len(state.pools) == 0


def test_deleting_a_pool_used_by_a_service_refused() -> None:
    state = state_with(V4, put_service("svc"))
    error = refused(state, delete_pool("v4"), "conflict")
    assert "svc" in error["message"]
    ok(state, delete_service("svc"))
    ok(state, delete_pool("v4"))


# -- services ------------------------------------------------------------------------------------


def test_service_gets_an_allocation_and_releases_it_on_delete() -> None:
    state = state_with(V4)
    value = ok(state, put_service("prod/ns/web", 80, 443))
    assert value["service"]["address"] == "192.0.2.0"
    assert state.allocations["prod/ns/web"].ports[0].port == 80
    check_index(state)
    ok(state, delete_service("prod/ns/web"))
    assert len(state.services) == 0
    assert len(state.allocations) == 0
    assert dict(state.by_address) == {}


def test_service_allocation_cannot_be_released_directly() -> None:
    state = state_with(V4, put_service("svc"))
    error = refused(state, release("svc"), "conflict")
    assert "service" in error["message"]
    error = refused(state, allocate("svc", address="192.0.2.3"), "conflict")
    assert error["field"] == "owner"


def test_service_update_keeps_or_moves_its_address() -> None:
    state = state_with(V4, put_service("svc", 80))
    assert address_of(state, put_service("svc", 80, 443)) == "192.0.2.0"
    assert address_of(state, put_service("svc", 80, vip="192.0.2.6")) == "192.0.2.6"
    assert dict(state.by_address) == {ip("192.0.2.6"): {"svc"}}
    assert state.services["svc"].address == ip("192.0.2.6")


def test_service_update_to_taken_vip_refused_and_keeps_old() -> None:
    state = state_with(V4, allocate("o1", address="192.0.2.6"), put_service("svc"))
    refused(state, put_service("svc", vip="192.0.2.6"), "conflict")
    assert state.services["svc"].address == ip("192.0.2.0")


def test_services_share_by_key() -> None:
    state = state_with(V4)
    a = address_of(state, put_service("dns-udp", "53/udp", sharing_key="dns"))
    b = address_of(state, put_service("dns-tcp", "53/tcp", sharing_key="dns"))
    c = address_of(state, put_service("dns-tcp-2", "53/tcp", sharing_key="dns"))
    assert a == b == "192.0.2.0"
    assert c == "192.0.2.1"
    refused(state, put_service("web", 80, vip=a), "conflict")


def test_service_vip_outside_pools_refused() -> None:
    state = state_with(V4)
    error = refused(state, put_service("svc", vip="203.0.113.10"), "invalid")
    assert error["field"] == "address"


# -- batches -------------------------------------------------------------------------------------


def test_batch_applies_everything() -> None:
    state = ClusterState()
    value = ok(
        state,
        batch(V4, allocate("o1"), put_service("svc"), report("lb1"), allocate("o2")),
    )
    assert [list(r) for r in value["results"]] == [
        ["pool"],
        ["allocation"],
        ["service"],
        [],
        ["allocation"],
    ]
    assert state.allocations["o2"].address == ip("192.0.2.2")
    assert set(state.members) == {"lb1"}
    assert state.revision == 1
    check_index(state)


@pytest.mark.parametrize(
    ("commands", "code"),
    [
        ([allocate("new"), allocate("o2", address="192.0.2.0")], "conflict"),
        ([put_pool("extra", "198.51.100.0/30"), put_pool("bad", "192.0.2.4")], "conflict"),
        ([release("o1"), release("o1")], "not_found"),
        ([put_service("svc2"), delete_pool("v4")], "conflict"),
        ([delete_service("svc"), allocate("o9", pool="ghost")], "not_found"),
        (
            [
                allocate("o3"),
                allocate("o4"),
                allocate("o5"),
                allocate("o6"),
                allocate("o7"),
                allocate("o8"),
                allocate("o9"),
            ],
            "exhausted",
        ),
        ([report("lb2"), release("svc")], "conflict"),
    ],
)
def test_batch_is_all_or_nothing(commands: list[dict[str, Any]], code: str) -> None:
    state = state_with(V4, allocate("o1"), put_service("svc"))
    before_index = {a: set(o) for a, o in state.by_address.items()}
    refused(state, batch(*commands), code)
    assert dict(state.by_address) == before_index
    # The state still works as before.
    assert address_of(state, allocate("later")) == "192.0.2.2"


def test_batch_sees_its_own_earlier_commands() -> None:
    state = ClusterState()
    value = ok(state, batch(V4, allocate("a", address="192.0.2.3"), allocate("b")))
    assert value["results"][2]["allocation"]["address"] == "192.0.2.0"
    value = ok(state, batch(release("a"), allocate("c", address="192.0.2.3")))
    assert state.allocations["c"].address == ip("192.0.2.3")


# -- refused commands ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        {"v": 2, "type": "pool.put", "pool": {"name": "p", "addresses": ["192.0.2.0/30"]}},
        {"v": 0, "type": "allocation.create", "request": {"owner": "o1"}},
        {"v": "1", "type": "allocation.create", "request": {"owner": "o1"}},
        {"type": "allocation.create", "request": {"owner": "o1"}},
        {"v": 1, "type": "pool.rename", "name": "p"},
        {"v": 1, "type": "lease.frobnicate", "node": "lb1"},
        {"v": 1},
        {"v": 1, "type": None},
        {"v": 1, "type": "POOL.PUT", "pool": {"name": "p", "addresses": ["192.0.2.0/30"]}},
        {
            "v": 2,
            "type": "batch",
            "commands": [{"v": 1, "type": "allocation.delete", "owner": "o1"}],
        },
    ],
)
def test_unknown_type_or_version_unsupported(command: dict[str, Any]) -> None:
    state = state_with(V4, allocate("o1"))
    refused(state, command, "unsupported")


@pytest.mark.parametrize(
    "command",
    [
        {"v": 1, "type": ["pool.put"]},
        {"v": 1, "type": {"name": "pool.put"}},
        {"v": 1, "type": "batch", "commands": [{"v": 1, "type": ["x"]}]},
    ],
)
def test_unhashable_type_is_refused_not_raised(command: dict[str, Any]) -> None:
    # Any JSON value can arrive as "type"; apply() promises never to raise (an exception in the
    # replicated entry point would break every node the same way).
    state = state_with(V4, allocate("o1"))
    before = state.to_data()
    result = state.apply(command)
    assert result["ok"] is False
    assert result["error"]["code"] in ("unsupported", "invalid")
    assert state.to_data() == before


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (
            {"v": 1, "type": "pool.put", "pool": {"name": "BAD", "addresses": ["192.0.2.8"]}},
            "pool.name",
        ),
        (
            {"v": 1, "type": "pool.put", "pool": {"name": "p", "addresses": ["192.0.2.1/28"]}},
            "pool.addresses.0",
        ),
        ({"v": 1, "type": "pool.put"}, "pool"),
        (
            {
                "v": 1,
                "type": "allocation.create",
                "request": {"owner": "o2", "ports": [{"port": 70000}]},
            },
            "request.ports.0.port",
        ),
        ({"v": 1, "type": "allocation.create", "request": {"owner": "o2"}, "extra": 1}, "extra"),
        ({"v": 1, "type": "allocation.delete", "owner": ""}, "owner"),
        ({"v": 1, "type": "service.put", "service": {"id": "s", "ports": []}}, "service.ports"),
        ({"v": 1, "type": "service.delete"}, "id"),
        ({"v": 1, "type": "member.report", "report": {"node": "lb1"}}, "report.version"),
        ({"v": 1, "type": "batch", "commands": []}, "commands"),
        (
            {"v": 1, "type": "batch", "commands": [{"v": 1, "type": "batch", "commands": [V4]}]},
            "commands.0",
        ),
        ({"v": 1, "type": "batch", "commands": [V4, {"v": 1, "type": "pool.delete"}]}, "name"),
    ],
)
def test_invalid_payload_refused(command: dict[str, Any], field: str) -> None:
    state = state_with(V4, allocate("o1"))
    error = refused(state, command, "invalid")
    details = error["details"]
    assert details
    assert any(d["field"].endswith(field) for d in details), details


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (
            {"v": 1, "type": "pool.put", "pool": {"name": "BAD", "addresses": ["192.0.2.8"]}},
            "pool.name",
        ),
        (
            {
                "v": 1,
                "type": "member.report",
                "report": {"node": "lb1", "raft_address": "x", "started_at": 1, "reported_at": 2},
            },
            "report.version",
        ),
        (
            {"v": 1, "type": "batch", "commands": [V4, {"v": 1, "type": "pool.delete"}]},
            "commands.1.name",
        ),
    ],
)
def test_invalid_payload_field_is_the_commands_own_path(
    command: dict[str, Any], field: str
) -> None:
    # The field path is the path inside the command as sent; the union tag ("pool.put.",
    # "member.report.") is not a key of the command and makes the path ambiguous.
    error = refused(ClusterState(), command, "invalid")
    assert [d["field"] for d in error["details"]] == [field]


@pytest.mark.parametrize("raw", ["pool.put", 1, None, ["v", 1], 1.5])
def test_non_object_command_invalid(raw: Any) -> None:
    state = state_with(V4)
    error = refused(state, raw, "invalid")
    assert type(raw).__name__ in error["message"]


def test_invalid_payload_names_the_bad_value() -> None:
    state = ClusterState()
    error = refused(
        state,
        {
            "v": 1,
            "type": "allocation.create",
            "request": {"owner": "o", "ports": [{"port": 70000}]},
        },
        "invalid",
    )
    assert [d["value"] for d in error["details"]] == [70000]
    assert error["details"][0]["field"].endswith("request.ports.0.port")


def test_member_report_replaces_previous() -> None:
    state = ClusterState()
    ok(state, report("lb1"))
    newer = report("lb1")
    newer["report"]["reported_at"] = 9.0
    ok(state, newer)
    assert state.members["lb1"].reported_at == 9.0
    assert len(state.members) == 1


# -- a preferred address (a move from another load balancer) -------------------------------------


def test_a_preferred_address_is_taken_when_free_and_ignored_otherwise() -> None:
    state = state_with(put_pool("p", "192.0.2.0/28", avoid_buggy_ips=True))
    assert address_of(state, put_service("a", prefer_vip="192.0.2.9")) == "192.0.2.9"
    # Taken already, outside the pool, avoided: the lowest free address instead, no error.
    assert address_of(state, put_service("b", prefer_vip="192.0.2.9")) == "192.0.2.1"
    assert address_of(state, put_service("c", prefer_vip="203.0.113.9")) == "192.0.2.2"
    assert address_of(state, put_service("d", prefer_vip="192.0.2.0")) == "192.0.2.3"
    # Under one sharing key with disjoint ports, the preferred address is shared.
    ok(state, put_service("e", 80, prefer_vip="192.0.2.12", sharing_key="k"))
    assert address_of(state, put_service("f", 443, prefer_vip="192.0.2.12", sharing_key="k")) == (
        "192.0.2.12"
    )
    check_index(state)


def test_a_preference_never_moves_a_vip_its_owner_holds() -> None:
    state = state_with(put_pool("p", "192.0.2.0/28"))
    assert address_of(state, put_service("a")) == "192.0.2.0"
    assert address_of(state, put_service("a", prefer_vip="192.0.2.7")) == "192.0.2.0"
    # A preference in another pool than the one named is no reason to fail either.
    ok(state, put_pool("q", "198.51.100.0/30"))
    assert address_of(state, put_service("b", pool="q", prefer_vip="192.0.2.7")) == "198.51.100.0"
    check_index(state)


def test_a_preference_of_the_other_family_is_refused_by_name() -> None:
    state = state_with(put_pool("p", "192.0.2.0/28"))
    error = refused(state, put_service("a", prefer_vip="2001:db8::5"), "invalid")
    (detail,) = error["details"]
    assert "prefer_vip 2001:db8::5 is not of the service's family ipv4" in detail["message"]


@pytest.mark.parametrize(
    ("pool", "asked", "says"),
    [
        ({"addresses": ["2001:db8::/64"]}, "2001:db8::", "all-zeros address of 2001:db8::/64"),
        (
            {"addresses": ["192.0.2.0/24"], "avoid_buggy_ips": True},
            "192.0.2.255",
            "avoid_buggy_ips",
        ),
        ({"addresses": ["192.0.2.0/24"]}, "198.51.100.1", "outside every pool"),
    ],
)
def test_asking_for_an_address_no_pool_hands_out_says_why(
    pool: dict[str, Any], asked: str, says: str
) -> None:
    state = state_with(put_pool("p", *pool.pop("addresses"), **pool))
    error = refused(state, put_service("a", vip=asked), "invalid")
    assert says in error["message"], error
    assert (error["field"], error["value"]) == ("address", asked)
