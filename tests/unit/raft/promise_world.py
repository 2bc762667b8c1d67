"""A simulated cluster for quorum-promise leases (raft/promises.py): books with their own
clocks, a lossy network with delays, a replicated log of owner changes, freezes and restarts.

Only the network, the clocks and the log are simulated; the books are the real `Promises`. The
log is checked as raft/ownership.py checks it (the same `valid_evidence` rules): a take needs
evidence against the owner's current epoch, and raises it; a refresh raises an epoch it names.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from raft.promises import Heartbeat, NodeFacts, Promises, evidence_needed

WINDOW = 0.25
PERIOD = 0.02


@dataclass(frozen=True)
class State:
    """The replicated state after an entry: the VIP's owner, epochs, registrations."""

    owner: str
    epochs: dict[str, int]
    registered: dict[str, int]


@dataclass
class Node:
    name: str
    rate: float  # its clock runs at this rate of real time
    offset: float
    book: Promises
    applied: int = 0
    frozen_until: float = -1.0
    down: bool = False
    next_send: float = 0.0
    lag: float = 0.0  # how far behind the log it applies (s)

    def clock(self, real: float) -> float:
        return self.offset + self.rate * real


@dataclass
class World:
    seed: int
    members: tuple[str, ...] = ("a", "b", "c")
    drift: float = 0.03
    rng: random.Random = field(init=False)
    now: float = 0.0
    log: list[tuple[float, State]] = field(default_factory=list)  # (commit time, state)
    nodes: dict[str, Node] = field(default_factory=dict)
    queue: list[tuple[float, int, str, Heartbeat]] = field(default_factory=list)
    drop: dict[tuple[str, str], float] = field(default_factory=dict)  # link -> until (real)
    delay_max: float = 0.02
    owners_seen: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    takes: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        registered = {}
        for name in self.members:
            node = self._new_node(name)
            registered[name] = node.book.incarnation
            self.nodes[name] = node
        self.log.append((0.0, State(self.members[0], dict.fromkeys(self.members, 0), registered)))

    def _new_node(self, name: str) -> Node:
        rate = 1 + self.rng.uniform(-self.drift, self.drift)
        offset = self.rng.uniform(0, 1000)
        incarnation = self.rng.randrange(1, 1 << 40)
        book = Promises(
            name,
            list(self.members),
            incarnation,
            WINDOW,
            started=offset + rate * self.now,
            drift=0.05,
            raft_grace=1.5,
        )
        return Node(name, rate, offset, book, next_send=self.now)

    # -- the replicated log -------------------------------------------------------------------

    def state(self) -> State:
        return self.log[-1][1]

    def applied_state(self, node: Node) -> State:
        return self.log[node.applied][1]

    def commit_take(self, old: str, to: str, epoch: int, by: dict[str, int]) -> bool:
        """Evidence is about one node (as `AssignVips.evidence` is keyed by node): it takes
        the VIP only from that node, if it still holds it."""
        state = self.state()
        valid = [p for p, inc in by.items() if p != old and state.registered.get(p) == inc]
        if state.owner != old or epoch != state.epochs[old]:
            return False
        if len(valid) < evidence_needed(len(self.members)):
            return False
        epochs = dict(state.epochs)
        epochs[old] += 1
        self.log.append((self.now, State(to, epochs, dict(state.registered))))
        self.takes += 1
        return True

    def commit_refresh(self, node: str, epoch: int) -> None:
        state = self.state()
        if state.epochs[node] == epoch:
            epochs = dict(state.epochs)
            epochs[node] += 1
            self.log.append((self.now, State(state.owner, epochs, dict(state.registered))))

    def commit_register(self, node: str, incarnation: int) -> None:
        state = self.state()
        registered = dict(state.registered)
        registered[node] = incarnation
        self.log.append((self.now, State(state.owner, dict(state.epochs), registered)))

    # -- faults -------------------------------------------------------------------------------

    def cut(self, source: str, target: str, seconds: float) -> None:
        self.drop[(source, target)] = self.now + seconds

    def freeze(self, name: str, seconds: float) -> None:
        self.nodes[name].frozen_until = self.now + seconds

    def crash(self, name: str) -> None:
        self.nodes[name].down = True

    def restart(self, name: str) -> None:
        node = self._new_node(name)
        node.applied = 0  # replays its journal: an old state first
        self.nodes[name] = node

    # -- one step -----------------------------------------------------------------------------

    def active(self, node: Node) -> bool:
        return not node.down and self.now >= node.frozen_until

    def step(self, dt: float, propose: bool = True) -> None:
        self.now += dt
        while self.queue and self.queue[0][0] <= self.now:
            _, _, target, hb = heapq.heappop(self.queue)
            node = self.nodes[target]
            if node.down:
                continue
            if not self.active(node):
                # Frozen: it reads its socket's backlog when it thaws.
                heapq.heappush(self.queue, (node.frozen_until, next(self._ids), target, hb))
                continue
            node.book.receive(node.clock(self.now), hb)
        for node in self.nodes.values():
            if not self.active(node):
                continue
            # It applies what was committed `lag` seconds ago.
            while (
                node.applied + 1 < len(self.log)
                and self.log[node.applied + 1][0] <= self.now - node.lag
            ):
                node.applied += 1
            state = self.applied_state(node)
            facts = {n: NodeFacts(state.registered.get(n), state.epochs[n]) for n in self.members}
            local = node.clock(self.now)
            node.book.observe_state(local, facts, set(self.members))
            if self.now >= node.next_send:
                node.book.tick(local, stall=WINDOW / 2)
                for target, hb in node.book.outgoing(local).items():
                    if self.drop.get((node.name, target), -1.0) > self.now:
                        continue
                    at = self.now + self.rng.uniform(0.0005, self.delay_max)
                    heapq.heappush(self.queue, (at, next(self._ids), target, hb))
                node.next_send = self.now + PERIOD
        for node in self.nodes.values():
            # A restarted node's first renewal commits a moment after it starts.
            registered = self.state().registered[node.name] == node.book.incarnation
            if self.active(node) and not registered and self.rng.random() < 0.1:
                self.commit_register(node.name, node.book.incarnation)
        if propose:
            self._propose()
        self.owners_seen.append((self.now, frozenset(self.answering())))

    def _propose(self) -> None:
        """A random live node acts as leader for a moment (any node may: the log's checks
        are what make a decision safe, as a deposed leader's queued entries show)."""
        live = [n for n in self.nodes.values() if self.active(n)]
        if not live:
            return
        proposer = self.rng.choice(live)
        state = self.applied_state(proposer)
        book = proposer.book
        local = proposer.clock(self.now)
        for node, epoch in book.stale(local).items():
            self.commit_refresh(node, epoch)
        owner = state.owner
        by = book.evidence(owner) if owner != proposer.name else None
        if by:
            others = [n for n in self.members if n != owner]
            self.commit_take(owner, self.rng.choice(others), book.facts()[owner].epoch, by)

    def answering(self) -> set[str]:
        """Nodes answering for the VIP now: assigned in their applied state, registered, and
        holding a lease by their own clock."""
        out = set()
        for node in self.nodes.values():
            if not self.active(node):
                continue
            state = self.applied_state(node)
            if state.owner != node.name or state.registered.get(node.name) != node.book.incarnation:
                continue
            if node.clock(self.now) < node.book.lease_until():
                out.add(node.name)
        return out
