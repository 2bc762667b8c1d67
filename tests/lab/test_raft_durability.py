"""Raft's persistent state reaches the disk before the node acts on it (raft/durable.py).

A power loss drops what is only in the page cache; a killed process does not, so the check
reads the disk itself: a filesystem on a loop device with direct I/O, whose backing file,
read with O_DIRECT, holds only what the filesystem has written out.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pysyncobj.journal import FileJournal

from raft.durable import DurableJournal


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(mount point, backing file) of a small ext4 on a direct-I/O loop device."""
    backing = tmp_path / "disk.img"
    with backing.open("wb") as handle:
        handle.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", str(backing)], check=True)
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--direct-io=on", str(backing)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if loop.returncode != 0:
        pytest.skip(f"no loop device here: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    mount = tmp_path / "mnt"
    mount.mkdir()
    try:
        subprocess.run(["mount", device, str(mount)], check=True)
        try:
            yield mount, backing
        finally:
            # Lazily if a failed test left a journal open: the loop device must still go.
            subprocess.run(["umount", "-l", str(mount)], check=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


def on_disk(backing: Path, needle: bytes) -> bool:
    """Whether `needle` is in what the filesystem wrote out (not in the page cache)."""
    fd = os.open(backing, os.O_RDONLY | os.O_DIRECT)
    buffer = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT wants
    try:
        offset, tail = 0, b""
        while (size := os.preadv(fd, [buffer], offset)) > 0:
            chunk = tail + buffer[:size]
            if needle in chunk:
                return True
            tail = chunk[-len(needle) :]  # a needle across two reads is still found
            offset += size  # reads stay aligned, as O_DIRECT wants
        return False
    finally:
        os.close(fd)
        buffer.close()


def marker() -> bytes:
    return f"entry-{uuid.uuid4().hex}".encode()


def test_pysyncobj_alone_leaves_acknowledged_entries_in_the_page_cache(
    disk: tuple[Path, Path],
) -> None:
    mount, backing = disk
    journal = FileJournal(str(mount / "raft.journal"))
    entry = marker()
    journal.add(entry, 2, 1)
    # What a follower acknowledges right after add(): a power loss now would lose it.
    assert not on_disk(backing, entry)
    journal._destroy()


def test_durable_journal_syncs_entries_before_a_message_and_votes_at_once(
    disk: tuple[Path, Path],
) -> None:
    mount, backing = disk
    journal = DurableJournal(str(mount / "raft.journal"))
    entries = [marker() for _ in range(3)]
    for index, entry in enumerate(entries, start=2):
        journal.add(entry, index, 1)
    journal.sync()  # what install_durable_send does before the acknowledgement goes out
    assert all(on_disk(backing, entry) for entry in entries)

    voted_for = f"node-{uuid.uuid4().hex}"
    journal.setCurrentTerm(7, voted_for)  # pysyncobj sends the vote right after this returns
    assert on_disk(backing, voted_for.encode())

    # A compaction: the dump must be on disk before the journal is cut to what follows it.
    dump = marker()
    (mount / "raft.dump").write_bytes(dump)
    kept = marker()
    journal.add(kept, 5, 7)
    journal.deleteEntriesTo(2)  # keeps the entries from position 2 on
    assert on_disk(backing, dump)
    assert on_disk(backing, kept)
    assert [e[0] for e in journal] == [entries[2], kept]
    journal._destroy()

    reopened = DurableJournal(str(mount / "raft.journal"))
    assert reopened.getCurrentTerm() == 7 and reopened.getVotedForNodeId() == voted_for
    assert [e[0] for e in reopened] == [entries[2], kept]
