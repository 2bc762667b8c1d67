"""Quorum-promise leases (mechanism B of DESIGN.md): the pure state machine and its argument.

Under mechanism A (raft/ownership.py) a node's lease rests on renewals committed through Raft,
so it must outlast an election and failover cannot beat ~0.8 s. Here the agents exchange small
authenticated heartbeats directly (appliance/heartbeats.py, every `period`), and a lease rests
on the peers' *promises*: failover waits for a promise window W, not for an election.

Terms. n nodes, m = n // 2 + 1. Each node X has, in the replicated state, a registered
incarnation (its latest renewal's) and a lease epoch `epochs[X]` (0 at first). A heartbeat from
P to X carries P's incarnation and epoch, its sequence number, an *echo* (the latest heartbeat
of X that P received: X's incarnation, epoch and seq), whether P *promises* X for that echo and
from which epoch of X on (`promised_from`), the set of (node, epoch) P has *abandoned*, and the
peers P would promise now (`hears`: heard within W and hearing P).

What each node promises. P promises X for a heartbeat received at r (P's clock) only if P is
registered in its own applied state, the heartbeat's incarnation is the one P's state holds for
X, X echoes a heartbeat P sent less than W ago (X hears P) and X's renewals still commit (P saw
one within `raft_grace`: X takes part in Raft). The promise: P will not abandon X, in any epoch,
before r + W by P's clock; it is good for X's epochs from e on, e being X's epoch in P's state,
or e + 1 if P has abandoned (X, e). P abandons (X, e), e being X's epoch in P's state, only once
every promise it gave X has ended, only after it has been running without a stall for W (a
restart forgets promises, a freeze misses heartbeats), only when its state has shown X as it is
(incarnation, epoch) for W (X had a chance to be promised), and never a node that has not
registered (it holds nothing). Abandoned epochs are never above P's state's, so no promise P
gives after abandoning (X, e) is good for (X, e), in this or any later incarnation: a later
one has applied P's registration, so its state is at least as new.

The lease. X answers for the VIPs its applied state assigns it while it is registered and it
holds promises good for its current epoch from m - 1 peers (with itself, a majority). A promise
for an echo of X's heartbeat sent at s (X's clock) counts until s + W x (1 - 2 drift) - margin:
P received it after s, and W on P's clock is at least W x (1 - drift) of real time, more than
the X-interval can be when X's clock runs slow by up to `drift`.

Taking without consent. The leader takes a VIP from X only with *evidence*: abandonments of
(X, epochs[X]) by at least n - m + 1 nodes other than X, each by its registered incarnation.
Applying the decision checks the evidence against the state it applies to (raft/ownership.py)
and raises epochs[X] in the same entry. Raising an epoch without taking anything needs no
evidence: the leader raises X's epoch when a peer gave up on X and every such peer hears X
again (`stale`), so that they promise X again; their promises are already good for the next
epoch, so X's lease does not pause.

Why two nodes never answer for one VIP. Let X answer v at time t under its applied state i,
and Y answer v at t. Y's state assigns v to Y, so some entry after i took v from X. If X
consented (a planned move: release, released, take), X stopped answering before it
acknowledged (raft/ownership.py rule 4). Otherwise let k be the first entry after i that
took v from X without its consent. It carried evidence: a set A of at least n - m + 1 peers
that abandoned (X, f), f being X's epoch just before k, and f >= e, X's epoch at i (epochs
only grow). X's lease at t rests on promises good for e from a set Q of m - 1 peers; both sets
are among X's n - 1 peers, so some P is in both. P abandoned (X, f) only once all its promises
to X had ended, and k committed after that and before t (Y applied k before answering): a
promise P gave before abandoning cannot cover t. One given after is good only from an epoch
above f (abandoned epochs are never above P's state's, and P's state only moves on), so not
for e. A restarted P does not escape this: the evidence names its registered incarnation at
k, so a later incarnation registered after k and its state holds k's raise of X's epoch
(this is why the taking entry raises it); earlier incarnations' promises ended before the
abandoning one had waited out W.

What each fault does. A crash, a freeze, a cut-off link: the promises end within W, the peers
abandon, the leader (or the next one) moves the VIPs; a thawed X rechecks its lease on its own
clock before it answers (the announcer's deadline). One-way loss: if X's heartbeats do not
reach P, or P's do not reach X (X's echoes of P go stale), P stops promising X; X keeps its
VIPs as long as m - 1 other peers promise it. A leader change: leases do not depend on commits,
so the VIPs of live nodes stay put through any election; only taking needs a leader. So that
an owner's death never waits for an election as well, the leader holds no VIP while another
node may (`vips_on_leader: avoid`, raft/scheduler.py's spare): the leader that takes a dead
owner's VIPs is alive and reads the evidence as soon as the promises end, and a leader's own
death moves nothing at once (its successor hands its VIPs over in planned moves).

Liveness under asymmetric partitions. If X cannot gather m - 1 promises, more than n - m peers
do not promise it, and each of them abandons it within W, whether it stopped hearing X, X
stopped hearing it (stale echoes), or X stopped taking part in Raft: that is n - m + 1
abandonments, evidence for the leader (which reads them in the heartbeats it receives).

A node one peer gave up on (one-way loss) keeps its VIPs on the others' promises; once that
peer hears it again, the leader raises its epoch and the peer's promises count again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field

# (node, epoch): a node's lease epoch some peer gave up on.
Abandonment = tuple[str, int]


@dataclass(frozen=True)
class Echo:
    """The receiver's latest heartbeat that the sender got."""

    incarnation: int
    epoch: int
    seq: int


@dataclass(frozen=True)
class Heartbeat:
    sender: str
    incarnation: int
    epoch: int
    seq: int
    echo: Echo | None = None
    promised_from: int | None = None  # the sender promises the receiver's epochs from this on
    leased: bool = False  # the sender holds a valid lease (the leader gives VIPs only then)
    abandoned: frozenset[Abandonment] = frozenset()
    hears: frozenset[str] = frozenset()  # peers the sender would promise now (both ways fine)


@dataclass(frozen=True)
class NodeFacts:
    """What this node's applied state says of one node."""

    incarnation: int | None  # registered (latest renewal's); None: never renewed
    epoch: int = 0


def quorum(n: int) -> int:
    return n // 2 + 1


def evidence_needed(n: int) -> int:
    """Abandonments (by nodes other than the one given up on) that meet every lease quorum."""
    return n - quorum(n) + 1


@dataclass
class _Peer:
    last: Heartbeat | None = None  # the latest heartbeat from this peer
    received_at: float = float("-inf")
    promised_until: float = float("-inf")  # this node's promises to the peer, any epoch
    promised: tuple[int, int] | None = None  # (incarnation, seq) of the last one promised
    leased_at: float = float("-inf")  # when it last said it holds a lease
    lease_until: float = float("-inf")  # what the peer's promises give this node (own clock)
    lease_from: int = 0  # ... for this node's epochs from this one on
    # Since when the state has shown the peer as it is now (incarnation, epoch): a node that
    # registered or got a new epoch a moment ago has had no chance to be promised yet.
    known: NodeFacts | None = None
    known_since: float = float("inf")


@dataclass
class Promises:
    """One node's side of the protocol. Not thread-safe; times are its monotonic clock."""

    me: str
    members: list[str]
    incarnation: int
    window: float  # W
    started: float
    drift: float = 0.05
    margin: float = 0.02
    raft_grace: float = 1.5
    _seq: int = 0
    _sent: dict[int, float] = field(default_factory=dict)  # seq -> send time, the last W
    _peers: dict[str, _Peer] = field(default_factory=dict)
    _facts: dict[str, NodeFacts] = field(default_factory=dict)
    _raft_alive: frozenset[str] = frozenset()
    _abandoned: set[Abandonment] = field(default_factory=set)
    _awake_since: float = 0.0
    _last_tick: float | None = None

    def __post_init__(self) -> None:
        self._peers = {n: _Peer() for n in self.members if n != self.me}
        self._awake_since = self.started

    # -- inputs -------------------------------------------------------------------------------

    def observe_state(
        self, now: float, facts: Mapping[str, NodeFacts], raft_alive: Set[str]
    ) -> None:
        """The applied state's view of every node, and whose renewals still commit."""
        self._facts = dict(facts)
        for node, peer in self._peers.items():
            if peer.known != self._facts.get(node):
                peer.known, peer.known_since = self._facts.get(node), now
        self._raft_alive = frozenset(raft_alive)
        # Abandonments of epochs already raised are moot: nobody promises an old epoch.
        self._abandoned = {
            (n, e) for n, e in self._abandoned if e >= self._facts.get(n, NodeFacts(None)).epoch
        }

    def tick(self, now: float, stall: float) -> None:
        """Called every period: notice own stalls, and give up on peers whose promises ended."""
        if self._last_tick is not None and now - self._last_tick > stall:
            self._awake_since = now  # frozen or starved: heartbeats may have been missed
        self._last_tick = now
        if now - self._awake_since < self.window:
            return
        for node, peer in self._peers.items():
            facts = self._facts.get(node)
            if (
                facts is None
                or facts.incarnation is None
                or now <= peer.promised_until
                or now - peer.known_since < self.window
            ):
                continue
            self._abandoned.add((node, facts.epoch))

    def receive(self, now: float, hb: Heartbeat) -> None:
        peer = self._peers.get(hb.sender)
        if peer is None:
            return
        last = peer.last
        if last is not None and hb.incarnation == last.incarnation and hb.seq <= last.seq:
            return  # reordered or replayed
        # Another incarnation is a restart: not ordered by number (the clock may have been
        # set back), and promised only if it is the registered one (`_promisable`).
        peer.last, peer.received_at = hb, now
        if hb.leased:
            peer.leased_at = now
        if self._promisable(now, hb):
            peer.promised_until = max(peer.promised_until, now + self.window)
            peer.promised = (hb.incarnation, hb.seq)
        echo = hb.echo
        if (
            hb.promised_from is not None
            and echo is not None
            and echo.incarnation == self.incarnation
            and echo.seq in self._sent
        ):
            until = self._sent[echo.seq] + self.window * (1 - 2 * self.drift) - self.margin
            if hb.promised_from != peer.lease_from:
                # P gave up on an epoch of ours: its earlier promises ended before it did.
                peer.lease_until, peer.lease_from = until, hb.promised_from
            else:
                peer.lease_until = max(peer.lease_until, until)

    def _promisable(self, now: float, hb: Heartbeat) -> bool:
        mine = self._facts.get(self.me)
        theirs = self._facts.get(hb.sender)
        if mine is None or mine.incarnation != self.incarnation or theirs is None:
            return False
        if hb.incarnation != theirs.incarnation or hb.sender not in self._raft_alive:
            return False
        echo = hb.echo  # the sender hears this node
        return (
            echo is not None
            and echo.incarnation == self.incarnation
            and now - self._sent.get(echo.seq, float("-inf")) < self.window
        )

    def outgoing(self, now: float) -> dict[str, Heartbeat]:
        """This period's heartbeat to each peer (its send time is recorded)."""
        self._seq += 1
        self._sent[self._seq] = now
        for seq in [s for s, at in self._sent.items() if now - at > self.window]:
            del self._sent[seq]
        mine = self._facts.get(self.me)
        epoch = mine.epoch if mine is not None else 0
        leased = now < self.lease_until()
        abandoned = frozenset(self._abandoned)
        hears = frozenset(self._heard(now))
        out = {}
        for node, peer in self._peers.items():
            last = peer.last
            echo = Echo(last.incarnation, last.epoch, last.seq) if last is not None else None
            # Only for the very heartbeat promised: an earlier promise covers less.
            promised = last is not None and peer.promised == (last.incarnation, last.seq)
            out[node] = Heartbeat(
                sender=self.me,
                incarnation=self.incarnation,
                epoch=epoch,
                seq=self._seq,
                echo=echo,
                promised_from=self._good_from(node) if promised else None,
                leased=leased,
                abandoned=abandoned,
                hears=hears,
            )
        return out

    def _good_from(self, node: str) -> int:
        """The first epoch of `node` a promise now is good for: never one given up on."""
        facts = self._facts.get(node)
        epoch = facts.epoch if facts is not None else 0
        return epoch + 1 if (node, epoch) in self._abandoned else epoch

    def _heard(self, now: float) -> set[str]:
        """Peers this node would promise now: heard within W, and their latest heartbeat was
        one it promised (they hear it, take part in Raft, are registered)."""
        return {
            name
            for name, peer in self._peers.items()
            if peer.last is not None
            and now - peer.received_at < self.window
            and peer.promised == (peer.last.incarnation, peer.last.seq)
        }

    # -- outputs ------------------------------------------------------------------------------

    def lease_until(self) -> float:
        """This node's lease end (its clock); -inf without one."""
        mine = self._facts.get(self.me)
        if mine is None or mine.incarnation != self.incarnation:
            return float("-inf")
        need = quorum(len(self.members)) - 1
        if need == 0:
            return float("inf")
        ends = sorted(
            (p.lease_until for p in self._peers.values() if p.lease_from <= mine.epoch),
            reverse=True,
        )
        return ends[need - 1] if len(ends) >= need else float("-inf")

    def lease_epoch(self) -> int | None:
        mine = self._facts.get(self.me)
        return mine.epoch if mine is not None else None

    def facts(self) -> dict[str, NodeFacts]:
        return dict(self._facts)

    def abandoned(self) -> frozenset[Abandonment]:
        return frozenset(self._abandoned)

    def evidence(self, node: str) -> dict[str, int] | None:
        """Who abandoned `node`'s current epoch, by registered incarnation, if enough did:
        this node itself and the peers whose latest heartbeat says so."""
        facts = self._facts.get(node)
        if facts is None or node == self.me:
            return None
        key = (node, facts.epoch)
        by: dict[str, int] = {}
        if key in self._abandoned:
            by[self.me] = self.incarnation
        for name, peer in self._peers.items():
            hb, registered = peer.last, self._facts.get(name)
            if name == node or hb is None or registered is None:
                continue
            if key in hb.abandoned and hb.incarnation == registered.incarnation:
                by[name] = hb.incarnation
        return by if len(by) >= evidence_needed(len(self.members)) else None

    def stale(self, now: float) -> dict[str, int]:
        """Nodes (this one too) that some peer gave up on at their current epoch, each such
        peer now willing to promise them again (`hears`): raising their epoch (by its current
        value, given) lets those peers' promises count again."""
        out = {}
        heard = self._heard(now)
        for node in self.members:
            facts = self._facts.get(node)
            if facts is None or facts.incarnation is None:
                continue
            key = (node, facts.epoch)
            givers = [
                (name, peer.last)
                for name, peer in self._peers.items()
                if name != node and peer.last is not None and key in peer.last.abandoned
            ]
            mine = key in self._abandoned
            if not givers and not mine:
                continue
            if mine and node not in heard:
                continue
            if all(node in hb.hears for _, hb in givers):
                out[node] = facts.epoch
        return out

    def leased_peers(self, now: float, within: float) -> set[str]:
        """Peers that said within `within` seconds that they hold a lease; this node too if it
        does. (Not "now": the leader's planner looks at this set, and a set that flickers
        with every late heartbeat made it replan thousands of VIPs again and again.)"""
        out = {name for name, peer in self._peers.items() if now - peer.leased_at < within}
        if now < self.lease_until():
            out.add(self.me)
        return out

    def report(self, now: float) -> dict[str, dict[str, object]]:
        """Per peer, for people: what its promises give this node, when it was last heard,
        whether it promised in its last heartbeat, and whether this node promises it."""
        out: dict[str, dict[str, object]] = {}
        for name, peer in self._peers.items():
            last = peer.last
            out[name] = {
                "lease_left": round(peer.lease_until - now, 3)
                if peer.lease_until > float("-inf")
                else None,
                "heard_ago": round(now - peer.received_at, 3) if last is not None else None,
                "promises_me": last.promised_from if last is not None else None,
                "promised_left": round(peer.promised_until - now, 3)
                if peer.promised_until > float("-inf")
                else None,
                "epoch": last.epoch if last is not None else None,
            }
        return out

    def silence(self, node: str, now: float) -> float | None:
        """Seconds since the last heartbeat from `node` (None: never)."""
        peer = self._peers.get(node)
        if peer is None or peer.last is None:
            return None
        return now - peer.received_at


def facts_of(
    renewals: Mapping[str, object], epochs: Mapping[str, int], members: Iterable[str]
) -> dict[str, NodeFacts]:
    """`NodeFacts` of every member from a state's renewals and epochs."""
    out = {}
    for node in members:
        renewal = renewals.get(node)
        incarnation = getattr(renewal, "incarnation", None)
        out[node] = NodeFacts(incarnation, epochs.get(node, 0))
    return out
