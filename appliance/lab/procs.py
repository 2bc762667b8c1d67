"""Process identity for the labs: a pid plus its start time, so a reused pid is never taken for
the process we started (and a process mid-exec, whose cmdline reads empty, is still ours)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ")".
    return text.rpartition(")")[2].split()


def start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def alive(pid: int | None, started: int | None) -> bool:
    """True if `pid` runs, is not a zombie, and is the process that started at `started`."""
    if pid is None:
        return False
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        if fields is not None:
            reap(pid, 0.0)
        return False
    return started is None or int(fields[19]) == started


def reap(pid: int, timeout: float = 5.0) -> bool:
    """Collect our child `pid` (no zombie left), or wait for a foreign one to vanish."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return True
        except ChildProcessError:
            fields = _stat_fields(pid)
            if fields is None or fields[0] == "Z":
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
