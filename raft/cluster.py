"""The Raft cluster of one agent: pysyncobj wired to the replicated state and to asyncio.

`RaftCluster` is the only place that touches pysyncobj. It exposes the narrow `Cluster`
interface the API and the agent use: a read-only view of the state, a status, and an async
`submit` that commits a command (forwarded to the leader by pysyncobj) or fails within a bounded
time with `SubmitError`; a request never hangs on a lost quorum.

Threads: pysyncobj applies entries and runs callbacks on its own tick thread. The state is
guarded by a lock; readers get an O(1) snapshot of its persistent maps. Callbacks hand
their result to asyncio with `call_soon_threadsafe` and never block the tick thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from raft import durable, pysyncobj_lib, wire
from raft.commands import Command, DeletePool, DeleteService, Release, encode
from raft.guarded import GuardedSyncObj
from raft.pysyncobj_lib import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from raft.state import ClusterState, StateView, view_to_data
from raft.timing import TimingProfile

# pysyncobj never syncs its journal, term or vote to disk: a power loss would make a node forget
# what it acknowledged and whom it voted for (raft/durable.py).
durable.install()
# pysyncobj buffers whatever length a frame header claims, before any password check.
wire.install()

log = logging.getLogger(__name__)

_RETRYABLE = frozenset(
    {
        FAIL_REASON.QUEUE_FULL,
        FAIL_REASON.MISSING_LEADER,
        FAIL_REASON.DISCARDED,
        FAIL_REASON.NOT_LEADER,
        FAIL_REASON.LEADER_CHANGED,
    }
)
_FAIL_NAMES = {value: name.lower() for name, value in vars(FAIL_REASON).items() if name.isupper()}


class SubmitError(Exception):
    """A command that was not committed: `code` is no_quorum, timeout or failed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RaftSettings:
    node_id: str
    address: str  # host:port other nodes reach this one at; pysyncobj's identity of the node
    peers: dict[str, str]  # node id -> Raft address, every member including this node
    password: str
    data_dir: Path
    timing: TimingProfile
    bind_address: str | None = None
    log_compaction_entries: int = 5000
    log_compaction_interval: float = 300.0
    keepalive: bool = True  # off only to demonstrate the trap it avoids
    prevote: bool = True  # the stall guard and PreVote (raft/guarded.py); off: the same
    durable: bool = True  # off only to measure what the journal flushes cost (raft/durable.py)


@dataclass(frozen=True)
class RaftStatus:
    node_id: str
    role: str
    leader: str | None
    term: int
    commit_index: int
    last_applied: int
    has_quorum: bool
    ready: bool
    connected: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "role": self.role,
            "leader": self.leader,
            "term": self.term,
            "commit_index": self.commit_index,
            "last_applied": self.last_applied,
            "has_quorum": self.has_quorum,
            "ready": self.ready,
            "connected": dict(self.connected),
        }


class Cluster(Protocol):
    """What the API and the agent need from the replicated state."""

    node_id: str

    def view(self) -> StateView: ...

    def status(self) -> RaftStatus: ...

    async def submit(self, command: Command, timeout: float) -> dict[str, Any]: ...


# The items a command carries: its apply time per item is what grows (or not) with size.
_ITEMS = {"batch": "commands", "vips.assign": "placements", "vips.released": "vips"}


class _Dump:
    """What `_serialize` hands pysyncobj: a snapshot that becomes plain data only when pickled.

    pysyncobj calls `_serialize` on its tick thread and pickles the result in a forked child
    (fullDumpFile): turning 5,000 services into dicts here took the tick thread away for
    hundreds of ms at every log compaction. The snapshot costs O(1); the child does the work,
    and the dump on disk is still a plain dict (`__reduce__`), readable whatever our classes.
    """

    def __init__(self, view: StateView) -> None:
        self.view = view

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, ({"state": view_to_data(self.view)},))


class ReplicatedState(SyncObjConsumer):  # type: ignore[misc]
    """The pysyncobj consumer: one replicated entry point, a JSON-able full dump.

    `apply` runs on pysyncobj's tick thread, the only one that touches the state; after each
    entry it publishes an O(1) snapshot that `view()` hands to any thread without a lock (a
    reader waiting for a lock held through a batch's apply stalled the agent's event loop).
    """

    def __init__(self) -> None:
        super().__init__()
        self._state = ClusterState()
        self._view: StateView = self._state.snapshot()
        self.on_change: Callable[[], None] | None = None
        # Called with (seconds, command type, commands in it) after each entry is applied.
        self.on_applied: Callable[[float, str, int], None] | None = None

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        result = self._state.apply(command)
        self._view = self._state.snapshot()  # one reference: readers see before or after
        if self.on_applied is not None:
            kind = command.get("type") if isinstance(command, dict) else None
            items = command.get(_ITEMS.get(kind, "")) if isinstance(kind, str) else None
            count = len(items) if isinstance(items, list | dict) and items else 1
            self.on_applied(
                time.perf_counter() - started, kind if isinstance(kind, str) else "", count
            )
        if self.on_change is not None:
            self.on_change()
        return result

    def view(self) -> StateView:
        return self._view

    # pysyncobj pickles what these return into its full dump; a plain dict keeps dumps readable
    # by later versions whatever our classes look like.
    def _serialize(self) -> _Dump:
        return _Dump(self.view())

    def _deserialize(self, data: dict[str, Any]) -> None:
        started = time.monotonic()
        state = ClusterState.from_data(data["state"])
        self._state = state
        self._view = state.snapshot()
        # A restart reading its dump, or a follower too far behind taking the leader's.
        log.info(
            "state loaded from a full dump: %d service(s), %d allocation(s) in %.2fs",
            len(state.services),
            len(state.allocations),
            time.monotonic() - started,
        )
        if self.on_change is not None:
            self.on_change()


def syncobj_conf(settings: RaftSettings) -> SyncObjConf:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SyncObjConf(
        password=settings.password,
        # Batching costs 100-200 ms per commit (FACTS.md); commits must be immediate.
        appendEntriesUseBatch=False,
        journalFile=str(settings.data_dir / "raft.journal"),
        fullDumpFile=str(settings.data_dir / durable.DUMP_NAME),
        # Default to the node's own address, not pysyncobj's 0.0.0.0: the Raft port then
        # listens only where peers are meant to reach it.
        bindAddress=settings.bind_address or settings.address,
        dynamicMembershipChange=False,
        logCompactionMinEntries=settings.log_compaction_entries,
        # Each node compacts in its own slot of every interval (pysyncobj's split: node i of n
        # from i*interval/n, for 0.3*interval/n). Without it every node reached the entry count
        # at the same index and forked its dump at once: at 5,000 services three children
        # pickling and the copy-on-write faults after three forks starved a 2-core machine,
        # the leader's tick stalled 200 ms and it lost its term (leases lapsed).
        logCompactionMinTime=settings.log_compaction_interval,
        logCompactionSplit=True,
        **settings.timing.syncobj_kwargs(),
    )


def _settle_resent_delete(command: Command, result: dict[str, Any]) -> dict[str, Any]:
    """A delete sent again after a lost acknowledgement may find its target already gone:
    the first attempt committed. Report that as the success it was."""
    error = result.get("error") or {}
    if result.get("ok") or error.get("code") != "not_found":
        return result
    if isinstance(command, DeletePool):
        target = command.name
    elif isinstance(command, DeleteService):
        target = command.id
    elif isinstance(command, Release):
        target = command.owner
    else:
        return result
    return {"ok": True, "value": {"deleted": target, "already_gone": True}}


class RaftCluster:
    """One node of the replicated state. Create it on the thread that lives as long as it."""

    def __init__(self, settings: RaftSettings) -> None:
        self.node_id = settings.node_id
        self._settings = settings
        self._id_by_address = {addr: node for node, addr in settings.peers.items()}
        others = [addr for node, addr in sorted(settings.peers.items()) if node != self.node_id]
        self.state = ReplicatedState()
        syncobj_class = GuardedSyncObj if settings.prevote else SyncObj
        self._syncobj = syncobj_class(
            settings.address, others, conf=syncobj_conf(settings), consumers=[self.state]
        )
        journal_sync = getattr(pysyncobj_lib.raft_log(self._syncobj), "sync", None)
        if settings.durable and journal_sync is not None:
            durable.install_durable_send(self._syncobj)
            # A lone node commits without sending anything: flush once per tick as well.
            self._syncobj.addOnTickCallback(journal_sync)
        self._keepalive_period = settings.timing.connection_timeout / 4
        self._last_keepalive = 0.0
        if settings.keepalive:
            self._syncobj.addOnTickCallback(self._keep_links_warm)

    @property
    def settings(self) -> RaftSettings:
        return self._settings

    def _keep_links_warm(self) -> None:
        """On the tick thread: a small message to every peer every connection_timeout / 4.

        pysyncobj checks a link's idle timeout only when data arrives, so on a follower-to-
        follower link (idle in Raft) the first message after connection_timeout closes the link,
        and after a leader dies that first message is the vote request: the election is lost
        and retried (0.5-0.7 s instead of ~0.2 s, FACTS.md). Peers ignore unknown types.
        """
        now = time.monotonic()
        if now - self._last_keepalive < self._keepalive_period:
            return
        self._last_keepalive = now
        transport = pysyncobj_lib.transport(self._syncobj)
        for node in self._syncobj.otherNodes:
            transport.send(node, {"type": "raftlb.keepalive"})

    def view(self) -> StateView:
        return self.state.view()

    def observe(
        self,
        applied: Callable[[float, str, int], None] | None = None,
        tick_lag: Callable[[float], None] | None = None,
        journal_sync: Callable[[float], None] | None = None,
    ) -> None:
        """Report the time each entry takes to apply, how late each tick ran and how long
        each journal sync took (metrics)."""
        self.state.on_applied = applied
        journal = pysyncobj_lib.raft_log(self._syncobj)
        if isinstance(journal, durable.DurableJournal):
            journal.on_sync = journal_sync
        if isinstance(self._syncobj, GuardedSyncObj):
            self._syncobj.raftlb_on_lag = tick_lag

    def _current_leader(self) -> Any:
        """pysyncobj's last known leader, if it can still be current.

        A follower cut off from every peer never starts an election, so pysyncobj never forgets
        its old leader: a leader we are not connected to is not a leader we can use or report.
        """
        obj = self._syncobj
        leader = obj._getLeader()
        if leader is None or obj._isLeader() or obj.isNodeConnected(leader):
            return leader
        return None

    def status(self) -> RaftStatus:
        obj = self._syncobj
        leader = self._current_leader()
        connected = {self.node_id: True}
        for node in obj.otherNodes:
            connected[self._id_by_address.get(node.id, node.id)] = bool(obj.isNodeConnected(node))
        return RaftStatus(
            node_id=self.node_id,
            role=pysyncobj_lib.role(obj),
            leader=self._id_by_address.get(leader.id, leader.id) if leader is not None else None,
            term=int(obj.raftCurrentTerm),
            commit_index=int(obj.raftCommitIndex),
            last_applied=int(obj.raftLastApplied),
            has_quorum=bool(obj.hasQuorum),
            ready=bool(obj.isReady()),
            connected=connected,
        )

    async def submit(self, command: Command, timeout: float) -> dict[str, Any]:
        """Commit `command` and return its result, or raise SubmitError within `timeout` s.

        When the leader is lost in flight the command is sent again (to the next leader) until
        the deadline: every command is idempotent (puts, owner-keyed allocations, reports), so
        a command that did commit before its acknowledgement was lost is harmless to repeat.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_reason = "no leader"
        resent = False
        raw = encode(command)
        while True:
            await self._wait_for_leader(deadline, timeout)
            result, error = await self._send_once(raw, deadline, timeout)
            if error == FAIL_REASON.SUCCESS:
                if not isinstance(result, dict):
                    raise SubmitError("failed", f"unexpected result {result!r}")
                return _settle_resent_delete(command, result) if resent else result
            last_reason = _FAIL_NAMES.get(error, str(error))
            if error not in _RETRYABLE:
                raise SubmitError("failed", f"not committed: {last_reason}")
            if loop.time() + 0.02 >= deadline:
                raise SubmitError(
                    "no_quorum",
                    f"not committed within {timeout:g}s: {last_reason} (the leader changed or "
                    "was lost); retrying is safe",
                )
            resent = True
            await asyncio.sleep(0.02)

    async def _wait_for_leader(self, deadline: float, timeout: float) -> None:
        # pysyncobj queues commands while no leader is known and commits them whenever one is
        # elected, perhaps long after the client gave up. Wait for a leader here instead, so a
        # command we report as failed for lack of quorum was never handed to Raft.
        loop = asyncio.get_running_loop()
        while self._current_leader() is None:
            if loop.time() >= deadline:
                raise SubmitError(
                    "no_quorum",
                    f"no Raft leader within {timeout:g}s: fewer than a majority of the "
                    f"{len(self._settings.peers)} nodes are reachable; check `raftlb nodes` "
                    "on each node",
                )
            await asyncio.sleep(0.01)

    async def _send_once(
        self, command: dict[str, Any], deadline: float, timeout: float
    ) -> tuple[Any, int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, int]] = loop.create_future()

        def on_commit(result: Any, error: int) -> None:  # runs on the tick thread
            def settle() -> None:
                if not future.done():
                    future.set_result((result, error))

            # RuntimeError: the loop closed while the command was in flight.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle)

        self.state.apply(command, callback=on_commit)
        try:
            return await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise SubmitError(
                "timeout",
                f"not committed within {timeout:g}s (no quorum, or the leader is unreachable); "
                "the command may still be applied later, and retrying it is safe",
            ) from None

    def tick_thread_id(self) -> int | None:
        """The kernel's id of pysyncobj's tick thread (None before it runs)."""
        thread = pysyncobj_lib.tick_thread(self._syncobj)
        return thread.native_id if thread is not None else None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the tick thread and close connections and the journal."""
        self._syncobj.destroy()
        thread = pysyncobj_lib.tick_thread(self._syncobj)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
