"""The lease heartbeats' wire format and thread, over real UDP sockets on loopback."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from appliance.heartbeats import HeartbeatError, HeartbeatService, decode, derive_key, encode
from raft.promises import Echo, Heartbeat, NodeFacts, Promises
from tests.support.waiting import until

KEY = derive_key("a long enough raft password")
FULL = Heartbeat(
    sender="n1",
    incarnation=1764765328170123,
    epoch=3,
    seq=42,
    echo=Echo(99, 1, 7),
    promised_from=3,
    leased=True,
    abandoned=frozenset({("n2", 1)}),
    hears=frozenset({"n3"}),
)


def test_a_heartbeat_survives_the_wire() -> None:
    assert decode(encode(FULL, KEY), KEY) == FULL
    bare = Heartbeat("n2", 1, 0, 1)
    assert decode(encode(bare, KEY), KEY) == bare


def test_another_password_or_a_changed_byte_is_refused() -> None:
    data = encode(FULL, KEY)
    with pytest.raises(HeartbeatError, match="bad tag"):
        decode(data, derive_key("another password"))
    tampered = data[:-3] + b"9" + data[-2:]
    with pytest.raises(HeartbeatError, match="bad tag"):
        decode(tampered, KEY)
    with pytest.raises(HeartbeatError):
        decode(b"short", KEY)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"s":"n1","i":-1,"e":0,"q":1,"c":null,"p":null,"l":false,"a":[],"h":[]}', "field i"),
        (b'{"s":"n1","i":1,"e":0,"q":1,"c":[1,2],"p":null,"l":false,"a":[],"h":[]}', "field c"),
        (b'{"s":"n1","i":1,"e":0,"q":1,"c":null,"p":"x","l":false,"a":[],"h":[]}', "field p"),
        (b'{"s":"n1","i":1,"e":0,"q":1,"c":null,"p":null,"l":false,"a":[1],"h":[]}', "field a"),
        (b'{"i":1}', "field s"),
    ],
)
def test_a_malformed_heartbeat_names_its_field(body: bytes, field: str) -> None:
    data = hmac.new(KEY, body, hashlib.sha256).digest()[:16] + body
    with pytest.raises(HeartbeatError, match=field):
        decode(data, KEY)


MEMBERS = ["n1", "n2", "n3"]
FACTS = {n: NodeFacts(i + 1, 0) for i, n in enumerate(MEMBERS)}


@pytest.fixture
def trio() -> Iterator[tuple[dict[str, Promises], dict[str, HeartbeatService], threading.Lock]]:
    lock = threading.Lock()  # one for all three: they share this process
    ports: dict[str, int] = {}
    services: dict[str, HeartbeatService] = {}
    books: dict[str, Promises] = {}
    for i, node in enumerate(MEMBERS):
        book = Promises(node, MEMBERS, i + 1, 0.25, started=time.monotonic())
        book.observe_state(time.monotonic(), FACTS, set(MEMBERS))
        books[node] = book
        services[node] = HeartbeatService(book, lock, ("127.0.0.1", 0), {}, "pw", 0.02)
        ports[node] = services[node].sock.getsockname()[1]
    for node, service in services.items():
        service.peers = {p: ("127.0.0.1", ports[p]) for p in MEMBERS if p != node}
        service.start()
    try:
        yield books, services, lock
    finally:
        for service in services.values():
            service.close()


def test_three_nodes_promise_each_other_and_give_up_a_silent_one(
    trio: tuple[dict[str, Promises], dict[str, HeartbeatService], threading.Lock],
) -> None:
    books, services, lock = trio

    def leased(node: str) -> bool:
        with lock:
            return books[node].lease_until() > time.monotonic()

    until(lambda: all(leased(n) for n in MEMBERS), "every node leased")
    services["n1"].stop_sending()  # a stopping agent: silent at once
    until(lambda: not leased("n1"), "n1's lease ended")

    def given_up() -> bool:
        with lock:
            return books["n3"].evidence("n1") == {"n2": 2, "n3": 3}

    until(given_up, "n1 given up")
    assert leased("n2") and leased("n3")  # the others keep theirs
    assert services["n2"].stats()["rejected"] == 0


def test_datagrams_of_another_password_are_counted_and_ignored(
    trio: tuple[dict[str, Promises], dict[str, HeartbeatService], threading.Lock],
) -> None:
    _, services, _ = trio
    port = services["n2"].sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        forged = Heartbeat("n1", 1, 0, 10**9, abandoned=frozenset({("n3", 0)}))
        sock.sendto(encode(forged, derive_key("not the password")), ("127.0.0.1", port))
    until(lambda: services["n2"].stats()["rejected"] == 1, "the forged heartbeat rejected")
