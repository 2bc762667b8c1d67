"""Raft's persistent state made durable: on disk before any message depends on it.

pysyncobj 0.3.17 writes its journal through a shared memory map and its term, vote and commit
index through write() + rename, and never syncs either: a node that loses power (a VM powered
off, a host crash; a killed process does not, the kernel keeps its page cache) comes back
having forgotten entries it acknowledged and the vote it gave, which Raft's safety needs (a
committed entry could be lost, two leaders elected in one term). Seen on the appliance image
(tests/image: a file written just before a VM's power-off was gone at its next boot).

`DurableJournal` keeps pysyncobj's file format and adds: term and vote fsynced (file and
directory) before `setCurrentTerm` returns (pysyncobj sends the vote right after); the full
dump and its directory fsynced before the journal is cut after a compaction; journal changes
flushed by `sync()`, which `install_durable_send` calls before every message the node sends
(one flush per message, not per entry: a follower acknowledging 1,000 entries flushes once).

It also applies Raft's cut rule, which pysyncobj does not: its follower cuts its whole log
tail whenever an AppendEntries overlaps it (logging "truncating already-applied log entries",
3-6 times per 1,200 commits on loopback), which can drop entries a majority needed: with five
nodes, a leader lost during such a cut could leave a committed entry on a minority. Here the
log is cut only at an entry that differs (see `_settle`).

Cost of the syncs (`raftlb lab bench raft`, 3 nodes on loopback, data on this machine's disk):
commit latency p50 durable/plain 0.94-1.17x, within the noise.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raft import pysyncobj_lib
from raft.pysyncobj_lib import journal as pysyncobj_journal
from raft.pysyncobj_lib import syncobj as pysyncobj_syncobj

log = logging.getLogger(__name__)

DUMP_NAME = "raft.dump"
EXIT_META_FAILED = 75  # EX_TEMPFAIL: systemd restarts the agent
# A journal sync this long holds this node's Raft tick (heartbeats, votes, commits) as long:
# with `fast` timing (elections after 0.15-0.3 s) the disk is what ends a leader's term.
SLOW_SYNC = 0.1


def fsync_path(path: str | Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableMetaStorer(pysyncobj_journal.MetaStorer):  # type: ignore[misc]
    """Term, vote and commit index: written, fsynced, renamed, directory fsynced."""

    def storeMeta(self, meta: dict[str, Any]) -> None:  # noqa: N802 - pysyncobj's name
        path = self.getPath()
        tmp = path + ".tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(pysyncobj_journal.dumps(meta))
                handle.flush()
                os.fsync(handle.fileno())
            shutil.move(tmp, path)
            fsync_path(os.path.dirname(path) or ".", directory=True)
        except OSError as exc:
            # pysyncobj logs a failed tick and goes on, with the new term or vote in memory
            # only: the node kept voting with "Too many open files". A node that cannot keep
            # its vote on disk must not vote at all: stop, and let systemd start it again.
            log.critical(
                "cannot write the Raft term and vote to %s (%s): stopping this agent now (a "
                "node that cannot keep its vote must not vote); free disk space or file "
                "descriptors, then start it again (systemd does)",
                path,
                exc,
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(EXIT_META_FAILED)


class DurableJournal(pysyncobj_journal.FileJournal):  # type: ignore[misc]
    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        pysyncobj_lib.set_meta_storer(self, DurableMetaStorer(journal_file + ".meta"))
        self._raftlb_dir = os.path.dirname(journal_file) or "."
        self._raftlb_dirty = False
        self._raftlb_cut: int | None = None
        # Called with the seconds of each journal sync (metrics).
        self.on_sync: Callable[[float], None] | None = None
        self._raftlb_slow = 0
        self._raftlb_slow_logged = 0.0

    def sync(self) -> None:
        """Flush the journal's changes to disk; cheap when there are none.

        fdatasync on the mapped file, not pysyncobj's `flush()` (mmap.flush, msync): CPython
        holds the GIL through msync, so every thread of the agent (its API, its lease loop)
        stood still for as long as the disk took, up to 140 ms (the one write in a hundred
        that missed 50 ms at 5,000 services). On Linux, msync(MS_SYNC) of a shared file
        mapping is an fsync of that range, and writes through the mapping dirty the page
        cache, so fdatasync of the file writes the same pages; it releases the GIL.
        """
        self._settle()
        if self._raftlb_dirty:
            started = time.monotonic()
            os.fdatasync(pysyncobj_lib.journal_fd(self))
            self._raftlb_synced(time.monotonic() - started)
            self._raftlb_dirty = False

    def _raftlb_synced(self, seconds: float) -> None:
        if self.on_sync is not None:
            self.on_sync(seconds)
        if seconds < SLOW_SYNC:
            return
        self._raftlb_slow += 1
        now = time.monotonic()
        if now - self._raftlb_slow_logged >= 60:  # the disk stays slow: once a minute is news
            log.warning(
                "Raft journal sync took %.0f ms (%d sync(s) over %.0f ms since the last "
                "warning): this node's Raft tick waits for its disk, so elections and lapsed "
                "leases follow; give data_dir a disk with low flush latency "
                "(raftlb_raft_journal_sync_seconds), or use timing `safe`",
                1000 * seconds,
                self._raftlb_slow,
                1000 * SLOW_SYNC,
            )
            self._raftlb_slow, self._raftlb_slow_logged = 0, now

    # -- Raft's cut rule ----------------------------------------------------------------------
    # pysyncobj's follower calls deleteEntriesFrom(p) whenever an AppendEntries overlaps its log
    # and then add()s the message's entries. Raft cuts only at the first entry that conflicts.
    # The cut is therefore held back: entries re-sent identical (same index, term and command)
    # are kept as they are; the first differing one makes the cut there. Entries past the
    # message's are kept if this node knew them committed (a committed entry is in every later
    # leader's log as it is here) or if they belong to the current term (then the current
    # leader wrote them, so its log has them too: the follower may count them when it learns
    # the leader's commit index); any other tail is cut, as pysyncobj would. Cutting committed
    # entries of an older term was the CRITICAL "replaced though committed" on healthy nodes:
    # a new leader's first AppendEntries to a follower that had been cut off overlapped them.

    def _settle(self) -> None:
        cut = self._raftlb_cut
        if cut is None:
            return
        self._raftlb_cut = None
        end, committed = self._raw_len(), int(self.getRaftCommitIndex() or 0)
        while cut < end and int(super().__getitem__(cut)[1]) <= committed:
            cut += 1
        tail = [super(DurableJournal, self).__getitem__(i) for i in range(cut, end)]
        if any(entry[2] != self.getCurrentTerm() for entry in tail):
            self._check_cut(cut)
            super().deleteEntriesFrom(cut)
            self._raftlb_dirty = True

    def _check_cut(self, cut: int) -> None:
        """A cut that drops an entry this node knew committed: what pysyncobj's CRITICAL
        "state machine may have diverged" warns of, said only when it is true (`_Overlap`
        quiets pysyncobj's, which fired at every overlapping AppendEntries)."""
        if cut >= self._raw_len():
            return
        first = int(super().__getitem__(cut)[1])
        committed = int(self.getRaftCommitIndex() or 0)
        if first <= committed:
            log.critical(
                "Raft log: entries from index %d replaced though this node had committed up to "
                "%d: its state may differ from the other members'. Stop this agent, remove its "
                "data_dir/raft and start it again: it then takes the leader's snapshot",
                first,
                committed,
            )

    def _raw_len(self) -> int:
        return int(super().__len__())

    def __getitem__(self, item: Any) -> Any:
        self._settle()
        return super().__getitem__(item)

    def __len__(self) -> int:
        self._settle()
        return self._raw_len()

    def add(self, command: bytes, idx: int, term: int) -> None:
        cut = self._raftlb_cut
        if cut is not None:
            if cut < self._raw_len() and super().__getitem__(cut) == (command, idx, term):
                self._raftlb_cut = cut + 1  # already there, identical: keep it
                return
            self._raftlb_cut = None
            self._check_cut(cut)
            super().deleteEntriesFrom(cut)
        super().add(command, idx, term)
        self._raftlb_dirty = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803
        self._settle()
        self._raftlb_cut = entryFrom

    def clear(self) -> None:
        # Called when a dump replaces the log (compaction, or a snapshot from the leader): the
        # dump must be on disk before the entries it replaces are dropped.
        self._raftlb_cut = None
        self._sync_dump()
        super().clear()
        self._raftlb_dirty = True

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802,N803
        self._settle()
        super().deleteEntriesTo(entryTo)
        # Entries kept were durable before the cut; leave no window where they are not.
        self._raftlb_dirty = True
        self.sync()

    def _sync_dump(self) -> None:
        dump = os.path.join(self._raftlb_dir, DUMP_NAME)
        if os.path.exists(dump):
            fsync_path(dump)
        fsync_path(self._raftlb_dir, directory=True)


def _create_journal(journal_file: str | None) -> Any:
    if journal_file is None:
        return pysyncobj_journal.MemoryJournal()
    return DurableJournal(journal_file)


class _Overlap(logging.Filter):
    """pysyncobj logs CRITICAL "truncating already-applied log entries ... state machine may
    have diverged" whenever an AppendEntries overlaps entries already applied: hundreds of times
    an hour on a healthy cluster, since leaders re-send entries. The journal keeps identical
    entries (the cut is deferred), so nothing diverged: that is a DEBUG line. A real divergence
    (a committed entry replaced) is logged by `DurableJournal._check_cut`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL and "may have diverged" in str(record.msg):
            if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.msg = (
                "AppendEntries overlaps applied entries from index %d (last applied %d); "
                "identical entries are kept"
            )
        return True


def install() -> None:
    """Make every SyncObj created from now on use DurableJournal (process-wide, like the
    inet_ntop repair: only raft/ uses pysyncobj, and it always wants durable journals)."""
    pysyncobj_syncobj.createJournal = _create_journal
    logger = logging.getLogger(pysyncobj_syncobj.__name__)
    if not any(isinstance(f, _Overlap) for f in logger.filters):
        logger.addFilter(_Overlap())


def install_durable_send(syncobj: Any) -> None:
    """Before each message this node sends, flush its journal: an acknowledgement, a vote or
    an AppendEntries never gets ahead of what is on disk."""
    journal = pysyncobj_lib.raft_log(syncobj)
    if not isinstance(journal, DurableJournal):
        return
    transport = pysyncobj_lib.transport(syncobj)
    send = transport.send

    def durable_send(node: Any, message: Any) -> Any:
        journal.sync()
        return send(node, message)

    # On the transport, not the SyncObj: attributes added to a SyncObj after its __init__
    # are pickled into its full dump.
    transport.send = durable_send
