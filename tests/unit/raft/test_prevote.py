"""PreVote's state machine (raft/prevote.py) with an injected clock: who may campaign, when.

A small simulation drives three nodes' PreVote objects through partitions, one-way loss, a
returning node and a dead leader; the property test checks that a node that still hears a live
leader never says yes, so no schedule of pre-vote messages lets a node depose a leader that a
majority hears.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from raft.prevote import HOLD, REQUEST, RESPONSE, LogPosition, PreVote

MIN = 0.15
LOG = LogPosition(3, 10)


def node(name: str, size: int = 3) -> PreVote:
    return PreVote(name, size, MIN, rand=lambda: 0.5)


def ask(asker: PreVote, peers: dict[str, PreVote], now: float, leader: str | None = None,
        term: int = 3, log: LogPosition = LOG, logs: dict[str, LogPosition] | None = None,
        reach: set[str] | None = None) -> bool:  # fmt: skip
    """One round: asker's request reaches `reach` (default: all), their answers come back."""
    request = asker.start_round(now, term, log)
    assert request["type"] == REQUEST and request["term"] == term + 1
    go = False
    for name, peer in peers.items():
        if reach is not None and name not in reach:
            continue
        answer = peer.answer(request, now, name == leader, (logs or {}).get(name, LOG))
        assert answer["type"] == RESPONSE
        go = asker.on_response(name, answer, now) or go
    return go


def test_a_follower_that_alone_stops_hearing_the_leader_is_refused() -> None:
    """One-way loss (or a cut link) between the leader n1 and n3: n2 still hears n1."""
    n1, n2, n3 = node("n1"), node("n2"), node("n3")
    n2.heard_leader(10.0)
    assert not ask(n3, {"n1": n1, "n2": n2}, now=10.05, leader="n1")
    assert n3.round is not None  # still open: no majority
    assert n3.expired(10.05 + MIN) == MIN * 0.75  # refused: try again later, briefly
    assert not n3.may_campaign(3)
    assert n3.refused_rounds == 1


def test_when_the_leader_is_dead_the_first_asker_gets_its_majority() -> None:
    n2, n3 = node("n2"), node("n3")
    n2.heard_leader(10.0)
    n3.heard_leader(10.0)
    # n3's deadline passes at 10.2; n2 last heard the leader 0.2 s ago (> MIN): yes.
    assert ask(n3, {"n2": n2}, now=10.2, leader=None)
    assert n3.may_campaign(3)
    assert not n3.may_campaign(3)  # once per round
    assert n3.granted_rounds == 1


def test_too_early_a_request_is_refused_then_the_retry_wins() -> None:
    n2, n3 = node("n2"), node("n3")
    n2.heard_leader(10.0)
    assert not ask(n3, {"n2": n2}, now=10.1)  # n2 heard the leader 0.1 s ago
    wait = n3.expired(10.1 + MIN)
    assert wait is not None
    assert ask(n3, {"n2": n2}, now=10.1 + MIN + wait)


def test_the_leader_itself_always_refuses() -> None:
    n1, n3 = node("n1"), node("n3")
    assert not ask(n3, {"n1": n1}, now=100.0, leader="n1")


def test_an_asker_with_an_older_log_is_refused_and_a_newer_log_wins() -> None:
    n2, n3 = node("n2"), node("n3")
    newer = {"n2": LogPosition(3, 11)}
    assert not ask(n3, {"n2": n2}, now=100.0, logs=newer)
    n3.expired(100.0 + MIN)
    assert not ask(n3, {"n2": n2}, now=101.0, logs={"n2": LogPosition(4, 1)})
    n3.expired(101.0 + MIN)
    assert ask(n3, {"n2": n2}, now=102.0, log=LogPosition(4, 2), logs={"n2": LogPosition(4, 1)})


def test_a_stale_term_can_still_win_a_round() -> None:
    """No term rule in pre-votes: else a node whose term lags but whose log is the newest
    (the only one that can win the real vote) would be refused forever."""
    n2, n3 = node("n2"), node("n3")
    assert ask(n3, {"n2": n2}, now=100.0, term=1)


def test_a_leader_heard_during_the_round_cancels_it() -> None:
    n2, n3 = node("n2"), node("n3")
    request = n3.start_round(100.0, 3, LOG)
    answer = n2.answer(request, 100.0, False, LOG)
    n3.heard_leader(100.01)  # a new leader's append_entries arrived meanwhile
    assert not n3.on_response("n2", answer, 100.02)
    assert not n3.may_campaign(3)


def test_answers_of_an_old_round_or_repeated_do_not_count() -> None:
    n3 = node("n3", size=5)
    old = n3.start_round(100.0, 3, LOG)
    n3.expired(100.0 + MIN)
    n3.start_round(100.3, 4, LOG)
    yes_old = {"type": RESPONSE, "term": old["term"], "granted": True}
    yes_new = {"type": RESPONSE, "term": 5, "granted": True}
    assert not n3.on_response("n1", yes_old, 100.31)
    assert not n3.on_response("n1", yes_new, 100.31)
    assert not n3.on_response("n1", yes_new, 100.32)  # the same peer twice: still 2 of 5
    assert n3.on_response("n2", yes_new, 100.33)  # 3 of 5


def test_a_single_node_cluster_campaigns_without_asking() -> None:
    assert node("n1", size=1).may_campaign(0)


def test_a_returning_isolated_node_cannot_disturb_a_leader_the_others_hear() -> None:
    """n3 was cut off for a long time (its term is stale, nothing heard): the others hear n1."""
    n1, n2, n3 = node("n1"), node("n2"), node("n3")
    for attempt in range(20):
        now = 500.0 + attempt * MIN
        n2.heard_leader(now - 0.04)  # the leader's heartbeats, every 40 ms
        assert not ask(n3, {"n1": n1, "n2": n2}, now=now, leader="n1")
        assert n3.expired(now + MIN + 0.001) is not None
    assert not n3.may_campaign(3)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=2.0),  # time of the event
            st.sampled_from(["heard", "ask"]),
            st.sampled_from(["n2", "n3"]),  # who hears the leader / who asks
        ),
        max_size=40,
    )
)
def test_no_schedule_gets_a_yes_from_a_node_that_heard_the_leader_recently(
    events: list[tuple[float, str, str]],
) -> None:
    """Whatever the order of leader contacts and pre-vote requests, a yes is only ever given
    by a node that has not heard a leader for MIN, and never by the leader."""
    nodes = {"n1": node("n1"), "n2": node("n2"), "n3": node("n3")}
    heard: dict[str, float] = {"n2": float("-inf"), "n3": float("-inf")}
    for now, what, who in sorted(events):
        if what == "heard":
            nodes[who].heard_leader(now)
            heard[who] = now
            continue
        request: dict[str, Any] = nodes[who].start_round(now, 3, LOG)
        for name, peer in nodes.items():
            if name == who:
                continue
            answer = peer.answer(request, now, name == "n1", LOG)
            if answer["granted"]:
                assert name != "n1"
                assert now - heard[name] >= MIN


# --- the gate before each of pysyncobj's ticks ------------------------------------------------


def test_the_gate_leaves_pysyncobj_a_deadline_that_never_passes_until_a_round_is_won() -> None:
    """pysyncobj campaigns by itself once its deadline is past, a moment after the gate ran:
    a tick just before a round's end must not leave it a deadline about to pass."""
    n3, n2 = node("n3"), node("n2")
    n2.heard_leader(10.25)  # n2 hears the leader: it refuses
    held, request = n3.gate(10.3, 10.29, 3, True, LOG)  # pysyncobj's own deadline passed
    assert held == HOLD and request is not None and request["term"] == 4
    assert n3.deadline == 10.3 + MIN  # the round's end, kept by the gate
    assert not n3.on_response("n2", n2.answer(request, 10.3, False, LOG), 10.3)
    held, request = n3.gate(10.3 + MIN - 1e-6, HOLD, 3, True, LOG)  # just before it ends
    assert (held, request) == (HOLD, None)
    held, request = n3.gate(10.3 + MIN, HOLD, 3, True, LOG)  # refused: wait, then ask again
    assert (held, request) == (HOLD, None) and n3.refused_rounds == 1
    held, request = n3.gate(n3.deadline + 0.001, HOLD, 3, True, LOG)
    assert held == HOLD and request is not None


def test_a_won_round_lets_the_next_tick_campaign_once() -> None:
    n3, n2 = node("n3"), node("n2")
    _, request = n3.gate(10.3, 10.29, 3, True, LOG)
    assert request is not None
    assert n3.on_response("n2", n2.answer(request, 10.31, False, LOG), 10.31)
    assert n3.gate(10.32, HOLD, 3, True, LOG) == (0.0, None)  # pysyncobj campaigns now
    # It did (term 4) and set its own next deadline: the gate takes it and holds again.
    assert n3.gate(10.33, 10.55, 4, True, LOG) == (HOLD, None)
    assert n3.deadline == 10.55


def test_the_gate_adopts_the_deadline_pysyncobj_moved_and_asks_nobody_before_it() -> None:
    n3 = node("n3")
    assert n3.gate(10.0, 10.2, 3, True, LOG) == (HOLD, None)  # a leader heard: 10.2
    assert n3.gate(10.19, HOLD, 3, True, LOG) == (HOLD, None)
    assert n3.gate(10.25, HOLD, 3, False, LOG) == (HOLD, None)  # nobody to ask
    held, request = n3.gate(10.26, HOLD, 3, True, LOG)
    assert held == HOLD and request is not None


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=0.2),  # time since the previous tick
            st.one_of(st.none(), st.floats(min_value=0.0, max_value=3.0)),  # pysyncobj moved it
            st.booleans(),  # a peer's yes arrives after this tick
        ),
        max_size=60,
    )
)
def test_pysyncobj_never_gets_a_passable_deadline_without_a_won_round(
    steps: list[tuple[float, float | None, bool]],
) -> None:
    """Whatever the ticks' timing and pysyncobj's own deadline moves, the gate hands pysyncobj
    either HOLD or, only once per won round, 0.0 (campaign now)."""
    n3, n2 = node("n3"), node("n2")
    now, pysyncobj, won = 1.0, 1.2, False
    for gap, moved, yes in steps:
        now += gap
        if moved is not None:
            pysyncobj = now + moved
        held, request = n3.gate(now, pysyncobj, 3, True, LOG)
        assert held == HOLD or (held == 0.0 and won), (held, won)
        if held == 0.0:
            won = False
        pysyncobj = held
        if request is not None and yes:
            won = n3.on_response("n2", n2.answer(request, now, False, LOG), now) or won


# --- split votes -------------------------------------------------------------------------------


def test_two_followers_asking_at_once_end_with_one_candidate() -> None:
    """The leader died; n2 and n3 start their rounds in the same moment: only n2 (the lower
    id) gets a yes, n3 gives its round up and waits, so the real vote is not split."""
    n2, n3 = node("n2"), node("n3")
    n2.heard_leader(10.0)
    n3.heard_leader(10.0)
    r2, r3 = n2.start_round(10.2, 3, LOG), n3.start_round(10.2, 3, LOG)
    yes_to_n3 = n2.answer(r3, 10.201, False, LOG, "n3")
    yes_to_n2 = n3.answer(r2, 10.201, False, LOG, "n2")
    assert not yes_to_n3["granted"] and yes_to_n2["granted"]
    assert n2.on_response("n3", yes_to_n2, 10.202)
    assert not n3.on_response("n2", yes_to_n3, 10.202)
    assert n3.round is None and n3.deadline >= 10.201 + MIN  # waits for n2's election
    assert n3.gate(10.21, HOLD, 3, True, LOG) == (HOLD, None)
    assert n2.gate(10.21, HOLD, 3, True, LOG) == (0.0, None)


def test_a_yes_moves_the_granters_own_election_back() -> None:
    """n3 asked first and got n2's yes; n2's own deadline passing a moment later must not
    start a second candidacy for the same term."""
    n2, n3 = node("n2"), node("n3")
    n2.gate(10.0, 10.2, 3, True, LOG)  # n2's deadline: 10.2
    request = n3.start_round(10.19, 3, LOG)
    assert n2.answer(request, 10.19, False, LOG, "n3")["granted"]
    assert n2.gate(10.21, HOLD, 3, True, LOG) == (HOLD, None)  # no round of its own yet
    assert n2.deadline == 10.19 + MIN * 1.5


def test_a_node_that_won_its_round_says_no_until_it_campaigned() -> None:
    n2, n3 = node("n2"), node("n3")
    request = n2.start_round(10.2, 3, LOG)
    assert n2.on_response("n3", n3.answer(request, 10.2, False, LOG, "n2"), 10.2)
    late = node("n1").start_round(10.201, 3, LOG)
    assert not n2.answer(late, 10.201, False, LOG, "n1")["granted"]


def test_a_node_in_its_own_round_yields_to_an_asker_with_a_newer_log() -> None:
    """The leader (n3) is cut off just after it sent n2 an entry that n1 has not got. n1 asks
    first and n2 refuses (older log); n2's round must not then wait for n1's to end, or the
    cluster stays leaderless past the nodes' leases (the returning leader won instead)."""
    n1, n2 = node("n1"), node("n2")
    n1.heard_leader(10.0)
    n2.heard_leader(10.0)
    behind, ahead = LogPosition(4, 20), LogPosition(4, 21)
    assert not ask(n1, {"n2": n2}, now=10.2, log=behind, logs={"n2": ahead})
    assert n1.round is not None
    request = n2.start_round(10.25, 3, ahead)
    assert n1.answer(request, 10.25, False, behind, "n2")["granted"]
    assert n1.round is None  # n1 gave its round up
    # With equal logs a round of its own still refuses the higher id (split votes).
    n1.start_round(10.3, 3, ahead)
    assert not n1.answer(n2.start_round(10.3, 3, ahead), 10.3, False, ahead, "n2")["granted"]
