"""The agent's side of the heartbeat helper (appliance/heartbeat_helper.py): start it, tell it
the applied state's facts, read its book, and extend the announcer from its reports.

The helper holds the book; the agent keeps only its newest `BookView`. Reading an older view
is safe: evidence is checked again when the taking entry applies (raft/ownership.py), an epoch
raise needs none, and a lease end is a deadline on the machine's monotonic clock, which every
process shares, so a report read late only shortens what it allows. A lease reported for an
epoch of this node is good for every later epoch (a promise is good for the node's epochs from
some epoch on), never for an earlier one: the loops check that against the state they announce.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Set
from typing import Any

from appliance.lease_book import BookView
from appliance.lease_cell import LeaseCell
from raft.promises import NodeFacts

log = logging.getLogger("raftlb.heartbeats")
START_TIMEOUT = 30.0  # an interpreter's start on a loaded machine; it takes ~0.1 s idle


class HelperError(RuntimeError):
    """The helper could not start (its reason), or stopped."""


class HelperBook:
    """`LeaseBook` over the helper process. `extend(epoch, until)` and `on_lease()` run on the
    relay thread; `on_exit()` there too if the helper dies while the agent runs."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        window: float,
        extend: Callable[[int | None, float], None],
        on_lease: Callable[[], None],
        on_exit: Callable[[], None],
    ) -> None:
        self.window = window
        self.extend, self.on_lease, self.on_exit = extend, on_lease, on_exit
        self.cell = LeaseCell.create()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.heartbeat_helper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(self.cell.fd,),
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout.fileno()
        self._view = BookView()
        self._rest = b""
        self._sent: bytes | None = None
        self._closing = False
        self._gone = False  # the helper exited: its cell is not read any more
        self._leased = False
        try:
            first = {**settings, "parent": os.getpid(), "lease_fd": self.cell.fd}
            self._in.write(json.dumps(first).encode() + b"\n")
            self._in.flush()
            self.port = self._first_line()
        except BaseException:
            self.kill()
            self.cell.close()
            raise
        os.set_blocking(self._in.fileno(), False)  # a frozen helper never blocks the loop
        self._thread = threading.Thread(target=self._relay, name="heartbeat-relay", daemon=True)
        self._thread.start()

    def _first_line(self) -> int:
        buf = b""
        deadline = time.monotonic() + START_TIMEOUT
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise HelperError(f"no answer within {START_TIMEOUT:.0f} s")
            chunk = os.read(self._out, 4096)
            if not chunk:
                raise HelperError(f"exited at start (code {self.proc.wait()})")
            buf += chunk
        first, self._rest = buf.split(b"\n", 1)
        answer = json.loads(first)
        if "error" in answer:
            raise HelperError(str(answer["error"]))
        return int(answer["ready"])

    # -- LeaseBook ----------------------------------------------------------------------------

    def observe(self, now: float, facts: Mapping[str, NodeFacts], raft_alive: Set[str]) -> None:
        line = (
            json.dumps(
                {
                    "facts": {n: [f.incarnation, f.epoch] for n, f in sorted(facts.items())},
                    "alive": sorted(raft_alive),
                },
                separators=(",", ":"),
            ).encode()
            + b"\n"
        )
        if line == self._sent:
            return
        # Under PIPE_BUF a write to a pipe is whole or not at all: a full pipe (a frozen helper)
        # skips this line and the next observe sends the newest.
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._in.fileno(), line)
            self._sent = line

    def view(self, now: float) -> BookView:
        """The newest report, with any newer lease end from the cell (appliance/lease_cell.py)."""
        view = self._view
        if self._gone:
            return view
        epoch, until = self.cell.read()
        if until > view.lease_until:
            view = dataclasses.replace(view, lease_until=until, lease_epoch=epoch)
        return view

    # -- the relay thread ---------------------------------------------------------------------

    def _relay(self) -> None:
        buf = self._rest
        while True:
            try:
                chunk = os.read(self._out, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            if b"\n" not in buf:
                continue
            lines, buf = buf.rsplit(b"\n", 1)
            newest = lines.rsplit(b"\n", 1)[-1]  # after a stall: only the newest counts
            try:
                view = BookView.from_json(json.loads(newest))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("heartbeat helper: unreadable report (%s)", exc)
                continue
            self._view = view
            now = time.monotonic()
            if view.lease_until > now:
                self.extend(view.lease_epoch, min(view.lease_until, now + self.window))
            if (view.lease_until > now) != self._leased:
                self._leased = view.lease_until > now
                self.on_lease()  # the reconciler decides what to hold
        if not self._closing:
            code = self.proc.wait()
            log.error(
                "heartbeat helper exited (code %s): this node's lease ends and its VIPs move; "
                "the agent stops so that it starts again with a new incarnation (check the "
                "log above for the helper's own error)",
                code,
            )
            self._gone = True
            self._view = BookView()
            self.on_exit()

    # -- stopping -----------------------------------------------------------------------------

    def silence(self) -> None:
        """Silent at once (a stopping agent): the peers give this node up within W."""
        self._closing = self._gone = True
        self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    def close(self) -> None:
        self._closing = self._gone = True
        self.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):
            self.cell.close()
        with contextlib.suppress(OSError):
            self._in.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        with contextlib.suppress(OSError):
            assert self.proc.stdout is not None
            self.proc.stdout.close()
