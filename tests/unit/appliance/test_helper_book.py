"""The heartbeat helper process and the agent's side of it, over loopback: real processes,
real UDP, real pipes (appliance/heartbeat_helper.py, appliance/helper_book.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.helper_book import HelperBook, HelperError
from appliance.lease_book import BookView
from raft.promises import NodeFacts
from tests.support.waiting import until

MEMBERS = ["n1", "n2", "n3"]
FACTS = {n: NodeFacts(i + 1, 0) for i, n in enumerate(MEMBERS)}
WINDOW = 0.25


def free_udp_ports(count: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def settings(node: str, ports: dict[str, int], **extra: Any) -> dict[str, Any]:
    return {
        "node": node,
        "members": MEMBERS,
        "incarnation": MEMBERS.index(node) + 1,
        "window": WINDOW,
        "drift": 0.05,
        "raft_grace": 1.5,
        "bind": ["127.0.0.1", ports[node]],
        "peers": {p: ["127.0.0.1", ports[p]] for p in MEMBERS if p != node},
        "password": "pw",
        "period": 0.02,
        "log_level": "warning",
        **extra,
    }


class Agent:
    """What the agent gives a helper: it records extensions, lease flips and an exit."""

    def __init__(self) -> None:
        self.extended: list[tuple[int | None, float]] = []
        self.flips = 0
        self.exited = threading.Event()

    def extend(self, epoch: int | None, until: float) -> None:
        self.extended.append((epoch, until))

    def flip(self) -> None:
        self.flips += 1


@pytest.fixture
def trio() -> Iterator[tuple[dict[str, HelperBook], dict[str, Agent]]]:
    ports = dict(zip(MEMBERS, free_udp_ports(3), strict=True))
    helpers: dict[str, HelperBook] = {}
    agents: dict[str, Agent] = {}
    try:
        for node in MEMBERS:
            agent = agents[node] = Agent()
            helpers[node] = HelperBook(
                settings(node, ports), WINDOW, agent.extend, agent.flip, agent.exited.set
            )
            helpers[node].observe(time.monotonic(), FACTS, set(MEMBERS))
        yield helpers, agents
    finally:
        for helper in helpers.values():
            helper.close()


def leased(helper: HelperBook) -> bool:
    return helper.view(time.monotonic()).lease_until > time.monotonic()


def test_helpers_give_leases_and_extend_the_agent_until_one_dies(
    trio: tuple[dict[str, HelperBook], dict[str, Agent]],
) -> None:
    helpers, agents = trio
    until(lambda: all(leased(h) for h in helpers.values()), "every helper leased", 20)
    n1 = agents["n1"]
    until(lambda: len(n1.extended) > 3, "the relay extending n1", 20)
    epoch, deadline = n1.extended[-1]
    now = time.monotonic()
    assert epoch == 0
    assert now < deadline <= now + WINDOW  # a deadline on the shared clock, never past W
    assert n1.flips == 1  # the lease began: the reconciler was woken once
    # The helper dies (a crash): its agent hears of it, and the peers give it up.
    helpers["n1"].kill()
    assert n1.exited.wait(10)
    assert not leased(helpers["n1"])

    def evidence() -> BookView:
        return helpers["n3"].view(time.monotonic())

    until(lambda: "n1" in evidence().evidence, "evidence of n1", 20)
    epoch_given_up, by = evidence().evidence["n1"]
    assert (epoch_given_up, by) == (0, {"n2": 2, "n3": 3})
    assert leased(helpers["n2"]) and leased(helpers["n3"])
    assert agents["n2"].exited.is_set() is False


def test_the_lease_stays_valid_while_the_relay_thread_is_stuck(
    trio: tuple[dict[str, HelperBook], dict[str, Agent]],
) -> None:
    """The agent's relay thread held up (its GIL taken by other work): the view, and so the
    announcer's lease source, reads the helper's newest lease from the shared cell."""
    helpers, agents = trio
    until(lambda: all(leased(h) for h in helpers.values()), "every helper leased", 20)
    stuck, release = threading.Event(), threading.Event()
    n1 = agents["n1"]
    relayed = n1.extend

    def held_up(epoch: int | None, deadline: float) -> None:
        if threading.current_thread() is helpers["n1"]._thread:
            stuck.set()
            release.wait(30)
        relayed(epoch, deadline)

    n1.extend = held_up  # type: ignore[method-assign]
    helpers["n1"].extend = held_up
    try:
        assert stuck.wait(10)
        relayed_until = helpers["n1"]._view.lease_until
        time.sleep(4 * WINDOW)
        now = time.monotonic()
        assert relayed_until < now  # the relay's report alone would have ended the lease
        view = helpers["n1"].view(now)  # what the announcer's lease source reads
        assert now < view.lease_until and view.lease_epoch == 0
    finally:
        release.set()


def test_a_silenced_helper_stops_at_once_and_its_agent_is_not_told_it_failed(
    trio: tuple[dict[str, HelperBook], dict[str, Agent]],
) -> None:
    helpers, agents = trio
    until(lambda: all(leased(h) for h in helpers.values()), "every helper leased", 20)
    helpers["n2"].silence()
    assert helpers["n2"].proc.wait(5) is not None
    until(lambda: "n2" in helpers["n1"].view(time.monotonic()).evidence, "evidence of n2", 20)
    time.sleep(0.1)
    assert not agents["n2"].exited.is_set()


def test_a_helper_whose_agent_closes_the_pipe_exits() -> None:
    ports = dict(zip(MEMBERS, free_udp_ports(3), strict=True))
    agent = Agent()
    helper = HelperBook(settings("n1", ports), WINDOW, agent.extend, agent.flip, agent.exited.set)
    try:
        assert helper._in is not None
        helper._in.close()  # what the kernel does when the agent dies, however
        assert helper.proc.wait(10) == 0
    finally:
        helper.close()


def test_facts_reach_the_helper_and_a_lease_waits_for_registration() -> None:
    ports = dict(zip(MEMBERS, free_udp_ports(3), strict=True))
    agents = {n: Agent() for n in MEMBERS}
    helpers = {
        n: HelperBook(settings(n, ports), WINDOW, agents[n].extend, agents[n].flip, lambda: None)
        for n in MEMBERS
    }
    try:
        unregistered = {**FACTS, "n1": NodeFacts(None, 0)}
        for helper in helpers.values():
            helper.observe(time.monotonic(), unregistered, set(MEMBERS))
        until(lambda: leased(helpers["n2"]) and leased(helpers["n3"]), "n2 and n3 leased", 20)
        time.sleep(3 * WINDOW)
        assert not leased(helpers["n1"]) and agents["n1"].extended == []
        for helper in helpers.values():
            helper.observe(time.monotonic(), FACTS, set(MEMBERS))
        until(lambda: leased(helpers["n1"]), "n1 leased", 20)
    finally:
        for helper in helpers.values():
            helper.close()


def test_a_helper_that_cannot_bind_says_why() -> None:
    ports = {"n1": 9, "n2": 9, "n3": 9}
    bad = settings("n1", ports, bind=["192.0.2.1", 0])  # not an address of this machine
    with pytest.raises(HelperError, match="assign requested address"):
        HelperBook(bad, WINDOW, Agent().extend, lambda: None, lambda: None)


def test_the_view_survives_its_wire_format() -> None:
    view = BookView(
        at=5.0,
        lease_until=6.5,
        lease_epoch=3,
        evidence={"n2": (1, {"n1": 7, "n3": 9})},
        stale={"n3": 2},
        leased=frozenset({"n1", "n3"}),
        heard_at={"n2": 4.5},
    )
    assert BookView.from_json(view.to_json()) == view
    assert BookView.from_json(BookView().to_json()) == BookView()
    assert view.age("n2", 5.0) == 0.5 and view.age("n1", 5.0) is None
