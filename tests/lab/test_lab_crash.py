"""The lab's crash methods do what they say, and `recover` undoes them.

- kill:   the agent's process is gone; the survivors elect a new leader; recover restarts it
          and it rejoins;
- link:   the node's processes still run, but the client cannot reach it and it sees no peer;
          recover makes it reachable again and it rejoins;
- freeze: every process in the node's namespace is stopped (state T) and its API does not
          answer; thaw and it answers again.

Each test crashes the leader of its own lab (the crash that matters for failover).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from appliance.lab import LabError, netns
from appliance.lab.netlab import NetLab
from tests.lab.labkit import (
    MakeLab,
    agreed_leader,
    ping,
    process_states,
    status_in,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)
SETTLE = 20.0  # seconds for an election, a rejoin, or a node noticing it is cut off


def new_leader_among(lab: NetLab, survivors: list[str], old: str) -> str | None:
    leader = agreed_leader(lab, survivors)
    return leader if leader is not None and leader != old else None


def stopped(lab: NetLab, node: str) -> dict[int, str] | None:
    """pid -> state of the node's processes once there are some and all are stopped (T)."""
    states = process_states(lab, node)
    return states if states and set(states.values()) == {"T"} else None


def answers_ping(lab: NetLab, target: object) -> bool:
    return ping(lab, "client", target).returncode == 0


def rejoined(lab: NetLab, node: str) -> dict[str, Any] | None:
    """`node`'s status once every node agrees on one leader and `node` is connected to all."""
    if agreed_leader(lab, lab.node_names()) is None:
        return None
    status = status_in(lab, node, via="client")
    if status is None or not all(status["raft"]["connected"].values()):
        return None
    return dict(status)


def test_kill_stops_the_agent_and_recover_restarts_it(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, backends=1)
    victim = lab.wait_leader()
    key = f"agent-{victim}"
    old_pid = lab.pid(key)
    lab.crash(victim, "kill")
    assert not lab.alive(key)
    assert netns.pids_in(lab.plan.host(victim).netns) == []
    new = lab.wait_leader(timeout=SETTLE, exclude=(victim,))
    assert new in lab.node_names() and new != victim
    assert status_in(lab, victim, via="client") is None

    lab.recover(victim, "kill")
    assert lab.alive(key) and lab.pid(key) != old_pid
    status = wait_for(partial(rejoined, lab, victim), SETTLE, f"{victim} rejoins")
    assert status["raft"]["leader"] in lab.node_names()
    with pytest.raises(LabError, match="already runs"):
        lab.recover(victim, "kill")


def test_link_cuts_the_node_off_but_its_processes_run(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, backends=1)
    victim = lab.wait_leader()
    others = [n for n in lab.node_names() if n != victim]
    ns = lab.plan.host(victim).netns
    before = set(netns.pids_in(ns))
    assert before
    lab.crash(victim, "link")

    assert lab.agent_alive(victim)
    assert set(netns.pids_in(ns)) == before
    assert set(process_states(lab, victim).values()) <= {"R", "S"}
    for family in ("ipv4", "ipv6"):
        target = getattr(lab.plan.host(victim), family)
        assert ping(lab, "client", target).returncode != 0, f"{victim} still answers {family}"

    def isolated() -> dict[str, Any] | None:
        status = status_in(lab, victim)  # asked inside the node: its own view
        if status is None:
            return None
        connected = status["raft"]["connected"]
        return status if not any(connected[n] for n in others) else None

    wait_for(isolated, SETTLE, f"{victim} sees its peers disconnected")

    def forgotten() -> bool:
        statuses = lab.statuses()
        return all(
            statuses[n] is not None and statuses[n]["raft"]["connected"][victim] is False
            for n in others
        )

    wait_for(forgotten, SETTLE, f"the others see {victim} disconnected")
    wait_for(partial(new_leader_among, lab, others, victim), SETTLE, "survivors elect a leader")

    lab.recover(victim, "link")
    for family in ("ipv4", "ipv6"):
        target = getattr(lab.plan.host(victim), family)
        wait_for(partial(answers_ping, lab, target), SETTLE, f"{victim} answers {family} again")
    wait_for(partial(rejoined, lab, victim), SETTLE, f"{victim} rejoins")


def test_freeze_stops_every_process_of_the_node_and_thaw_resumes_them(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(nodes=3, backends=1)
    victim = lab.wait_leader()
    others = [n for n in lab.node_names() if n != victim]
    lab.crash(victim, "freeze")

    # SIGSTOP takes effect when the target next runs: on a loaded machine a moment later.
    states = wait_for(partial(stopped, lab, victim), 5, f"every process of {victim} stopped")
    assert set(states.values()) == {"T"} and lab.agent_alive(victim), states
    assert status_in(lab, victim, via="client", timeout=1.0) is None
    assert status_in(lab, victim, timeout=1.0) is None  # not even from inside
    wait_for(partial(new_leader_among, lab, others, victim), SETTLE, "survivors elect a leader")

    lab.recover(victim, "freeze")
    states = process_states(lab, victim)
    assert states and "T" not in states.values(), states
    wait_for(partial(status_in, lab, victim, "client"), SETTLE, f"{victim} answers again")
    wait_for(partial(rejoined, lab, victim), SETTLE, f"{victim} rejoins")


@pytest.mark.parametrize("method", ["link", "freeze"])
def test_wait_leader_excluding_a_crashed_leader_returns_the_new_one(
    make_lab: MakeLab, method: str
) -> None:
    """What a failover benchmark does after any crash method: wait for the survivors' leader."""
    lab = make_lab(nodes=3, backends=1)
    victim = lab.wait_leader()
    lab.crash(victim, method)
    try:
        new = lab.wait_leader(timeout=10, exclude=(victim,))
    finally:
        lab.recover(victim, method)
    assert new != victim
