"""Raft's PreVote (Ongaro's thesis, 9.6) for pysyncobj, which has none: the pure state machine.

Without it, a node that stops hearing the leader while the others still do (one-way packet
loss, a link to the leader alone cut, a node returning from isolation) campaigns with a higher
term; any follower that sees the higher term adopts it and drops its leader, so the healthy
leader is deposed, the term climbs and leases lapse on nodes the fault never touched (the
term rose by 4-11 in 11 of 15 such lab rounds).

With it, a node whose election deadline passes first asks every peer "would you vote for me in
term T+1?" without changing any term. A peer says yes only if it has not heard from a leader
for its minimum election timeout (so it too believes the leader is gone), is not the leader
itself, and the asker's log is at least as up to date as its own (the vote rule). Only with a
majority of yeses (its own included) does the node start the real election; otherwise it waits
and asks again later. Since a real vote needs the same majority, PreVote never keeps an
election from happening that could have succeeded, except for peers that still hear a leader:
exactly the ones that must not be disturbed.

Safety is Raft's own: PreVote only withholds elections, it never grants a vote or changes a term,
so the leader-uniqueness and log properties are untouched. Liveness: when the leader is really
gone, every follower's last contact ages past the minimum timeout, so the first node whose
(randomised) deadline passes gets its yeses; a refused round is retried after a short random
wait. One-way loss (the leader's packets to C lost, C's to the leader arriving): C's peers
still hear the leader and refuse; C stays a follower without a leader (its leases lapse: the
fault touched it) and the cluster around the leader is untouched.

Split votes. When the leader dies, the follower whose deadline passes first asks; if another
campaigned in the same moment, both would win their rounds, both campaign for the same term,
each votes for itself and the election takes a second round (a leader's death then cost
0.5-0.6 s instead of 0.3 s). As Raft restarts its timer when it grants a vote, a node that
says yes moves its own election back by a fresh timeout; a node in a round of its own says
yes only to a lower id (and gives its round up), and one that already won its round says no:
two askers at once end with one candidate. These only add refusals and delays, so safety is
untouched; a refused asker asks again after a short wait.

Holding pysyncobj's election back. pysyncobj campaigns on its own as soon as its election
deadline has passed, and some time always passes between the gate (`gate`, before its tick) and
its check (the GIL, the rest of the tick): a gate that let a deadline just ahead of `now`
through saw it pass before pysyncobj's check, and the node campaigned without a round (a
one-way loss raised the term four times in 2 of 14 lab runs). So the gate keeps the real
deadline itself and leaves pysyncobj `HOLD`, a deadline that never passes, unless this very
tick may campaign (0.0). pysyncobj still moves its deadline when it hears a leader or gives a
vote, and the stall guard when it holds a thawed node back: the gate takes any deadline that
is not `HOLD` as the new real one.

The glue that feeds it pysyncobj's messages and election deadline is raft/guarded.py.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REQUEST = "raftlb_prevote"
RESPONSE = "raftlb_prevote_response"
HOLD = math.inf  # the election deadline pysyncobj holds while PreVote withholds its election


@dataclass(frozen=True, slots=True)
class LogPosition:
    term: int  # the term of the last entry
    index: int  # the index of the last entry

    def at_least(self, other: LogPosition) -> bool:
        """Raft's "at least as up to date": a later last term, or the same and no shorter."""
        return (self.term, self.index) >= (other.term, other.index)


@dataclass
class Round:
    term: int  # the term the node would campaign in
    started: float
    yes: set[str] = field(default_factory=set)


class PreVote:
    """One node's side. `now` is a monotonic clock; all calls come from one thread."""

    def __init__(
        self,
        self_id: str,
        cluster_size: int,
        min_timeout: float,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.self_id = self_id
        self.size = cluster_size
        self.min_timeout = min_timeout
        self.round_timeout = min_timeout  # a round without its majority by then is refused
        self.rand = rand
        self.last_leader_contact = float("-inf")
        self.round: Round | None = None
        self.deadline = 0.0  # the real election deadline (pysyncobj holds HOLD meanwhile)
        self.cleared_term: int | None = None  # a majority said yes to campaigning in it
        self.refused_rounds = 0  # counters for metrics and logs
        self.granted_rounds = 0

    @property
    def majority(self) -> int:
        return self.size // 2 + 1

    # --- what the node hears ----------------------------------------------------------------

    def heard_leader(self, now: float) -> None:
        """An append_entries of the current (or a newer) term arrived: a leader lives."""
        self.last_leader_contact = now
        self.round = None
        self.cleared_term = None

    def answer(
        self,
        request: dict[str, Any],
        now: float,
        is_leader: bool,
        mine: LogPosition,
        asker: str = "",
    ) -> dict[str, Any]:
        """The reply to a peer's pre-vote request. Terms and votes never change here; a yes
        only moves this node's own election back (see "Split votes")."""
        theirs = LogPosition(int(request["last_log_term"]), int(request["last_log_index"]))
        proposed = int(request["term"])
        # No term condition: a node with a stale term must be able to win a round, campaign,
        # lose (its term is too low), and come back one term higher; the real vote keeps
        # Raft's term rule.
        granted = (
            not is_leader
            and now - self.last_leader_contact >= self.min_timeout
            and theirs.at_least(mine)
            and self.cleared_term is None  # about to campaign itself
            and (self.round is None or self._yields(mine, theirs, asker))
        )
        if granted:
            self.round = None
            self.deadline = max(self.deadline, now + self.min_timeout * (1 + self.rand()))
        return {"type": RESPONSE, "term": proposed, "granted": granted}

    def _yields(self, mine: LogPosition, theirs: LogPosition, asker: str) -> bool:
        """Whether a node in a round of its own gives it up for `asker`'s: the asker's log is
        newer (it would refuse this node's round by the vote rule: waiting out this round only
        delays the one that can win, and a leader cut off for under a second then came back
        and won, after the others' leases had lapsed without commits), or the logs are equal
        and the asker has the lower id."""
        return not mine.at_least(theirs) or (theirs == mine and asker < self.self_id)

    # --- the node's own elections -----------------------------------------------------------

    def may_campaign(self, term: int) -> bool:
        """pysyncobj's deadline passed: may it start the election for `term` + 1 now?"""
        if self.cleared_term == term + 1:
            self.cleared_term = None
            return True
        return self.size == 1

    def start_round(self, now: float, term: int, mine: LogPosition) -> dict[str, Any]:
        """A new round for term + 1 (the node votes for itself): the request to send to all."""
        self.round = Round(term + 1, now, {self.self_id})
        return {
            "type": REQUEST,
            "term": term + 1,
            "last_log_index": mine.index,
            "last_log_term": mine.term,
        }

    def on_response(self, peer: str, response: dict[str, Any], now: float) -> bool:
        """A peer's reply; True when this round has its majority: campaign now."""
        r = self.round
        if r is None or int(response["term"]) != r.term or not response.get("granted"):
            return False
        if self.last_leader_contact > r.started:  # a leader spoke since: stand down
            self.round = None
            return False
        r.yes.add(peer)
        if len(r.yes) < self.majority:
            return False
        self.round = None
        self.cleared_term = r.term
        self.granted_rounds += 1
        self.deadline = now  # campaign at the next tick
        return True

    def expired(self, now: float) -> float | None:
        """If the open round has timed out: drop it and return how long to wait before the
        next one (short and random, so two askers do not keep colliding)."""
        r = self.round
        if r is None or now - r.started < self.round_timeout:
            return None
        self.round = None
        self.refused_rounds += 1
        return self.min_timeout * (0.5 + 0.5 * self.rand())

    def gate(
        self, now: float, deadline: float, term: int, connected: bool, mine: LogPosition
    ) -> tuple[float, dict[str, Any] | None]:
        """Before each of pysyncobj's ticks on a node that does not lead: the election deadline
        to leave pysyncobj (HOLD, or 0.0 when this tick may campaign) and a pre-vote request
        to send when a round starts. `deadline` is pysyncobj's as it stands."""
        if deadline != HOLD:
            self.deadline = deadline  # pysyncobj heard a leader or voted, or the stall guard
        wait = self.expired(now)
        if wait is not None:
            self.deadline = now + wait
            return HOLD, None
        if self.deadline >= now or not connected:  # pysyncobj campaigns only when connected
            return HOLD, None
        if self.may_campaign(term):
            return 0.0, None
        request = self.start_round(now, term, mine) if self.round is None else None
        assert self.round is not None
        self.deadline = self.round.started + self.round_timeout
        return HOLD, request
