"""DurableJournal's cut rule: pysyncobj's follower asks to cut its whole tail on any overlapping
AppendEntries (deleteEntriesFrom, then add of the message's entries); the journal cuts only
where Raft would. The calls below are the ones pysyncobj makes, in its order."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from raft import durable
from raft.durable import DurableJournal, install


def entry(idx: int, term: int, text: str = "") -> tuple[bytes, int, int]:
    return (f"cmd-{idx}-{term}{text}".encode(), idx, term)


def journal_with(
    tmp_path: Path, entries: list[tuple[bytes, int, int]], term: int
) -> DurableJournal:
    journal = DurableJournal(str(tmp_path / "raft.journal"))
    for item in entries:
        journal.add(*item)
    journal.setCurrentTerm(term, None)
    journal.sync()
    return journal


def test_a_resent_overlap_of_the_current_term_keeps_the_log(tmp_path: Path) -> None:
    log = [entry(i, 2) for i in range(1, 6)]
    journal = journal_with(tmp_path, log, term=2)
    # A late duplicate: prev index 2, entries 3 and 4 again.
    journal.deleteEntriesFrom(2)
    journal.add(*entry(3, 2))
    journal.add(*entry(4, 2))
    assert list(journal) == log  # entry 5 is kept: the current leader wrote it
    journal.sync()
    reopened = DurableJournal(str(tmp_path / "raft.journal"))
    assert list(reopened) == log


def test_a_heartbeat_overlapping_the_tail_keeps_current_term_entries(tmp_path: Path) -> None:
    log = [entry(i, 3) for i in range(1, 5)]
    journal = journal_with(tmp_path, log, term=3)
    journal.deleteEntriesFrom(3)  # no entries in the message
    assert len(journal) == 4


def test_a_tail_from_an_older_term_is_cut(tmp_path: Path) -> None:
    # Entries 4-5 came from the leader of term 1, which died; the leader of term 2 may not
    # have them: keeping them could let this node count them as committed.
    log = [entry(i, 1) for i in range(1, 6)]
    journal = journal_with(tmp_path, log, term=2)
    journal.deleteEntriesFrom(3)
    journal.add(*entry(4, 1))  # the new leader does have entry 4
    assert list(journal) == log[:4]


def test_a_committed_tail_from_an_older_term_is_kept_and_not_called_a_divergence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A follower cut off while the leader of term 1 committed 1-6, back under that node's
    # new term 4: its first AppendEntries overlaps the committed entries from an earlier index.
    log = [entry(i, 1) for i in range(1, 9)]
    journal = journal_with(tmp_path, log, term=4)
    journal.setRaftCommitIndex(6)
    with caplog.at_level(logging.DEBUG):
        journal.deleteEntriesFrom(3)
        journal.add(*entry(4, 1))
        assert list(journal) == log[:6]  # 5 and 6 kept (committed), 7 and 8 cut (older term)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_conflicting_entry_cuts_there_and_replaces(tmp_path: Path) -> None:
    log = [entry(i, 1) for i in range(1, 6)]
    journal = journal_with(tmp_path, log, term=2)
    journal.deleteEntriesFrom(2)
    journal.add(*entry(3, 1))  # identical
    journal.add(*entry(4, 2, "-new"))  # differs: the cut happens here
    journal.add(*entry(5, 2, "-new"))
    assert list(journal) == [*log[:3], entry(4, 2, "-new"), entry(5, 2, "-new")]
    journal.sync()
    assert list(DurableJournal(str(tmp_path / "raft.journal"))) == list(journal)


def test_compaction_after_a_held_cut_sees_the_settled_log(tmp_path: Path) -> None:
    log = [entry(i, 1) for i in range(1, 6)]
    journal = journal_with(tmp_path, log, term=2)
    journal.deleteEntriesFrom(3)  # older-term tail: cut when anything reads or cuts the log
    journal.deleteEntriesTo(1)
    assert list(journal) == log[1:3]


def test_only_a_replaced_committed_entry_is_critical(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pysyncobj's CRITICAL "may have diverged" fired at every overlap; the journal says it
    only when an entry this node knew committed is replaced."""
    log = [entry(i, 1) for i in range(1, 6)]
    journal = journal_with(tmp_path, log, term=2)
    journal.setRaftCommitIndex(3)
    with caplog.at_level(logging.DEBUG):
        journal.deleteEntriesFrom(2)  # overlap, entries identical: nothing to say
        journal.add(*entry(3, 1))
        journal.add(*entry(4, 2, "-new"))  # entry 4 was not committed: a normal cut
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        journal.deleteEntriesFrom(1)
        journal.add(*entry(2, 2, "-other"))  # entry 2 was committed: divergence
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and "index 2" in critical[0].getMessage()


def test_pysyncobjs_overlap_alarm_is_a_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    from pysyncobj import syncobj

    install()
    logger = logging.getLogger(syncobj.__name__)
    message = (
        "truncating already-applied log entries from index %d (last applied: %d) - state "
        "machine may have diverged from other cluster members"
    )
    with caplog.at_level(logging.INFO):
        logger.critical(message, 5, 9)
    assert not caplog.records
    with caplog.at_level(logging.DEBUG):
        logger.critical(message, 5, 9)
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "identical entries are kept" in caplog.records[0].getMessage()


def test_a_vote_that_cannot_reach_the_disk_stops_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """pysyncobj went on after a failed storeMeta (Too many open files), voting with a term
    only in memory."""
    from raft import durable

    journal = journal_with(tmp_path, [entry(1, 1)], term=1)
    exits: list[int] = []

    def no_fsync(fd: int) -> None:
        raise OSError(24, "Too many open files")

    def exit_(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(durable.os, "fsync", no_fsync)
    monkeypatch.setattr(durable.os, "_exit", exit_)
    with pytest.raises(SystemExit):
        journal.setCurrentTerm(2, "n2")
    assert exits == [durable.EXIT_META_FAILED]
    assert "must not vote" in caplog.text


def test_sync_writes_the_journal_with_fdatasync_not_msync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # msync (pysyncobj's flush, mmap.flush) holds the GIL while the disk writes: the agent's
    # API and lease loop stood still behind it. The sync must go through fdatasync of the
    # journal file, which releases the GIL.
    from pysyncobj import journal as pysyncobj_journal

    def no_msync(self: object) -> None:
        raise AssertionError("journal synced through mmap.flush (holds the GIL)")

    journal = DurableJournal(str(tmp_path / "raft.journal"))
    monkeypatch.setattr(pysyncobj_journal.ResizableFile, "flush", no_msync)
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(os.fstat(fd).st_ino), real(fd)))
    timed: list[float] = []
    journal.on_sync = timed.append
    log = [entry(i, 1, "x" * 5000) for i in range(1, 400)]  # grows (and remaps) the file
    for item in log:
        journal.add(*item)
    journal.sync()
    journal.sync()  # nothing new: no second sync
    assert synced == [os.stat(tmp_path / "raft.journal").st_ino]
    assert len(timed) == 1 and timed[0] >= 0
    assert list(DurableJournal(str(tmp_path / "raft.journal"))) == log


def test_a_slow_journal_sync_is_logged_once_a_minute_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(durable, "SLOW_SYNC", 0.0)  # every sync counts as slow
    journal = DurableJournal(str(tmp_path / "raft.journal"))
    with caplog.at_level(logging.WARNING, logger="raft.durable"):
        for i in range(1, 4):
            journal.add(*entry(i, 1))
            journal.sync()
    slow = [r for r in caplog.records if "journal sync took" in r.getMessage()]
    assert len(slow) == 1, [r.getMessage() for r in slow]
    assert "raftlb_raft_journal_sync_seconds" in slow[0].getMessage()
