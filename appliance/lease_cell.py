"""This node's lease end, shared by the heartbeat helper and the agent through memory.

The helper (appliance/heartbeat_helper.py) computes the lease from its peers' promises every
heartbeat period at real-time priority. Its reports reach the agent through a pipe and a relay
thread, and that thread needs the agent's GIL: at 5,000 services the leader's GIL was held by
one long piece of work past a 0.25 s window, the announcer's deadline passed before the relay
ran, and a lease the helper still held lapsed in the agent (then every VIP was withdrawn and
announced again, which loaded the machine into more lapses). With the cell, whoever in the
agent reaches the deadline first (the announcer's thread, the reconciler) reads the helper's
newest lease itself, however long the relay waits.

Reading it is as safe as reading the relay's report: the same (epoch, until) pair, from the
same writer, on the machine's one monotonic clock, so it is only newer. One writer; a reader
checks a CRC over the record, so a read that raced a write (on any CPU's memory ordering) is
seen as torn and read again, and after a few tries is taken for "no lease" (the safe side).
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib

# seq, epoch (-1: none), until (monotonic seconds), crc32 of the 24 bytes before it.
_RECORD = struct.Struct("<qqdI")
_BODY = struct.Struct("<qqd")
SIZE = 64
_TRIES = 8
NO_LEASE: tuple[int | None, float] = (None, float("-inf"))


class LeaseCell:
    """A shared (epoch, until) record over the file descriptor `fd` (a memfd)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, SIZE)
        self._seq = 0

    @classmethod
    def create(cls) -> LeaseCell:
        """A new cell holding no lease; its fd is inheritable only through `pass_fds`."""
        fd = os.memfd_create("raftlb-lease", os.MFD_CLOEXEC)
        os.ftruncate(fd, SIZE)
        cell = cls(fd)
        cell.write(None, float("-inf"))
        return cell

    def write(self, epoch: int | None, until: float) -> None:
        self._seq += 1
        body = _BODY.pack(self._seq, -1 if epoch is None else epoch, until)
        self._map[: _RECORD.size] = body + struct.pack("<I", zlib.crc32(body))

    def read(self) -> tuple[int | None, float]:
        for _ in range(_TRIES):
            try:
                raw = self._map[: _RECORD.size]  # one copy: the CRC tells whether it is whole
            except ValueError:  # closed: the agent is stopping
                return NO_LEASE
            _, epoch, until, crc = _RECORD.unpack(raw)
            if zlib.crc32(raw[: _BODY.size]) == crc:
                return (None if epoch < 0 else epoch), until
        return NO_LEASE

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)
