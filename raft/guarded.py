"""pysyncobj's SyncObj with the two guards Raft needs and pysyncobj lacks: no election by a node
that was only stalled, and PreVote (raft/prevote.py: the state machine and its argument).

Times come from pysyncobj's own clock (pysyncobj_lib.now: CLOCK_MONOTONIC_RAW), never from
time.monotonic: the two were 0.15 s apart here, and a deadline read on the wrong clock passes
early (every follower then asked for pre-votes five times a second and won them from any node
that had lost its leader). Both run on pysyncobj's tick thread only, through the seam
(raft/pysyncobj_lib.py): the stall guard around each tick, PreVote before each tick (it holds
pysyncobj's election back until a majority said yes) and in front of pysyncobj's message
handler (pre-vote requests and replies never reach it; peers without PreVote ignore unknown
message types, so in a mixed cluster during an upgrade a node with PreVote campaigns only
once a majority runs it, and votes as before).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from raft import prevote, pysyncobj_lib
from raft.prevote import LogPosition, PreVote
from raft.pysyncobj_lib import SyncObj

log = logging.getLogger("raft.cluster")
REFUSED_LOG_EVERY = 10.0  # seconds between two "pre-vote refused" lines


class StallGuardedSyncObj(SyncObj):  # type: ignore[misc]
    """A frozen node waits for the leader's heartbeat before any election.

    A node that was frozen (SIGSTOP, a paused VM, a long GC) wakes with its election deadline
    long past and campaigns at once with a higher term, deposing a healthy leader. Around each
    tick, if the tick thread was stalled longer than raft_max_timeout, push the election deadline
    out by 2 x raft_max_timeout: a live leader's heartbeat reaches the node first and it simply
    follows; without a leader it campaigns a little later.

    A subclass, not a patched instance: attributes set on a SyncObj after its __init__ are
    pickled into the full dump, and a closure there makes every log compaction fail.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before SyncObj.__init__ so that pysyncobj counts them as its own properties
        # (never dumped), and before its tick thread starts calling _onTick.
        conf = kwargs["conf"]
        self._raftlb_stall = float(conf.raftMaxTimeout)
        self._raftlb_period = float(conf.autoTickPeriod)
        self._raftlb_fallback = float(conf.leaderFallbackTimeout)
        self._raftlb_last_tick = pysyncobj_lib.now()
        self._raftlb_last_start = self._raftlb_last_tick
        # Called with how late each tick started behind its schedule (metrics).
        self.raftlb_on_lag: Callable[[float], None] | None = None
        super().__init__(*args, **kwargs)

    def _raftlb_hold_back(self, since: float) -> None:
        now = pysyncobj_lib.now()
        if now - since > self._raftlb_stall and not self._isLeader():
            pysyncobj_lib.set_election_deadline(self, now + 2 * self._raftlb_stall)
            log.warning(
                "Raft tick thread was stalled %.2fs (frozen?): waiting for the leader's "
                "heartbeat before any election",
                now - since,
            )

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802,N803 - pysyncobj's names
        self._raftlb_hold_back(self._raftlb_last_tick)  # stalled between ticks
        started = pysyncobj_lib.now()
        # A tick is due at the latest one period after the previous one started (its poll
        # returns early when messages come): anything later is time the thread lost, to work
        # on this thread (applying entries) or to the GIL.
        lag = started - self._raftlb_last_start - self._raftlb_period
        self._raftlb_last_start = started
        if self.raftlb_on_lag is not None:
            self.raftlb_on_lag(max(0.0, lag))
        leading = self._isLeader()
        ages = pysyncobj_lib.response_ages(self, started) if leading else {}
        term = pysyncobj_lib.current_term(self)
        try:
            super()._onTick(timeToWait)
        finally:
            # A freeze usually lands in the tick's poll(): catch it before the next tick's
            # election check runs.
            self._raftlb_hold_back(started)
            self._raftlb_last_tick = pysyncobj_lib.now()
        if leading and not self._isLeader() and pysyncobj_lib.current_term(self) == term:
            # pysyncobj's check-quorum: too few followers answered within
            # leaderFallbackTimeout. An election follows; say which answers were missing.
            log.warning(
                "stepped down as Raft leader in term %d: too few followers answered within "
                "%.2fs (last answers %s ago; this tick ran %.2fs late)",
                term,
                self._raftlb_fallback,
                ", ".join(f"{n} {age:.2f}s" for n, age in sorted(ages.items())),
                max(0.0, lag),
            )


class GuardedSyncObj(StallGuardedSyncObj):
    """The stall guard and PreVote (RaftSettings.prevote)."""

    def __init__(self, self_address: str, others: list[str], **kwargs: Any) -> None:
        conf = kwargs["conf"]
        self._raftlb_prevote = PreVote(self_address, len(others) + 1, float(conf.raftMinTimeout))
        self._raftlb_refused_logged = 0.0
        self._raftlb_stall_hint = float(conf.raftMinTimeout) / 2
        super().__init__(self_address, others, **kwargs)

    def _raftlb_position(self) -> LogPosition:
        term, index = pysyncobj_lib.last_log(self)
        return LogPosition(term, index)

    def _raftlb_prevote_gate(self) -> None:
        """Before pysyncobj's tick: let its election start only once a round said yes."""
        if pysyncobj_lib.role(self) == "leader" or pysyncobj_lib.transfer_in_progress(self):
            return
        pv = self._raftlb_prevote
        now = pysyncobj_lib.now()
        refused = pv.refused_rounds
        deadline, request = pv.gate(
            now,
            pysyncobj_lib.election_deadline(self),
            pysyncobj_lib.current_term(self),
            pysyncobj_lib.connected_to_anyone(self),
            self._raftlb_position(),
        )
        pysyncobj_lib.set_election_deadline(self, deadline)
        if request is not None:
            transport = pysyncobj_lib.transport(self)
            for node in pysyncobj_lib.other_nodes(self):
                transport.send(node, request)
        if pv.refused_rounds != refused and now - self._raftlb_refused_logged > REFUSED_LOG_EVERY:
            self._raftlb_refused_logged = now
            log.info(
                "no election: a majority still hears a leader or has a newer log "
                "(pre-vote refused %d time(s) so far)",
                pv.refused_rounds,
            )

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        kind = message.get("type") if isinstance(message, dict) else None
        pv = self._raftlb_prevote
        if kind == prevote.REQUEST:
            mine = self._raftlb_position()
            now = pysyncobj_lib.now()
            answer = pv.answer(message, now, self._isLeader(), mine, str(node.id))
            pysyncobj_lib.transport(self).send(node, answer)
            if answer["granted"]:
                # Rare by design (the leader is gone for this node too): worth a line.
                log.info(
                    "pre-vote for term %s granted to %s: no leader heard for %.2fs",
                    answer["term"],
                    node.id,
                    now - pv.last_leader_contact,
                )
            return
        if kind == prevote.RESPONSE:
            if pv.on_response(str(node.id), message, pysyncobj_lib.now()):
                log.info("pre-vote for term %s won: campaigning", message.get("term"))
            return
        if kind == "append_entries" and message.get("term", -1) >= pysyncobj_lib.current_term(self):
            pv.heard_leader(pysyncobj_lib.now())
        pysyncobj_lib.on_message(self, node, message)

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802,N803 - pysyncobj's names
        # A node whose tick thread was stalled (its agent busy, the GIL taken) has not read
        # the leader's heartbeats waiting in its sockets: to it the leader looks gone, and it
        # granted a cut-off node's pre-vote before reading them (a one-way loss then still
        # raised the term three times). After a stall it counts as having just heard the
        # leader: it refuses pre-votes for raft_min_timeout more, while it catches up.
        now = pysyncobj_lib.now()
        if now - self._raftlb_last_tick > self._raftlb_stall_hint and not self._isLeader():
            self._raftlb_prevote.heard_leader(now)
        self._raftlb_prevote_gate()
        super()._onTick(timeToWait)
