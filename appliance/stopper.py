"""The agent's stop: silent at once, gone within a bound, whatever its tasks do.

A SIGTERM (or SIGINT) must end the node's claim on its VIPs at once and the process soon after.
The orderly stop (withdraw BGP routes, cancel the loops, close the API, remove the nftables
tables) takes a few seconds and depends on every task honouring its cancellation, which
Python 3.11 does not promise: `asyncio.wait_for` can swallow a cancellation that coincides with
its wake-up (fixed in 3.12), and `asyncio.run` then waits for that task forever. Meanwhile the
layer-2 announcer, a thread of its own, kept answering ARP (5 s once, "1 task(s) did not finish").

So the signal handler does nothing that can block and hands over to a thread of its own:
1. `silence()`: the layer-2 announcer answers and announces nothing from then on (its lock is
   taken in that thread, never in the handler, which may have interrupted its holder);
2. `stop()`: the orderly stop starts in the event loop;
3. a watchdog: if the agent has not called `finished()` within `bound` seconds, it logs what
   was left and ends the process with `os._exit` (exit status 1: a forced stop, like a
   kill -9 as far as the cluster is concerned, which it survives by design; the next start
   replaces the nftables tables). A second signal ends it at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("raftlb.agent")
STOP_BOUND = 15.0  # seconds; within the unit's TimeoutStopSec (20 s) so systemd never SIGKILLs
FORCED_EXIT = 1
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopper:
    """Install in the main thread; `attach()` once the event loop runs; `finished()` last."""

    def __init__(
        self,
        bound: float = STOP_BOUND,
        exit_now: Callable[[int], Any] = os._exit,
    ) -> None:
        self.bound = bound
        self._exit_now = exit_now
        self._lock = threading.Lock()
        self._silence: Callable[[], None] | None = None
        self._stop: Callable[[], object] | None = None
        self.requested_at: float | None = None
        self.silenced_at: float | None = None
        self._done = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def attach(self, stop: Callable[[], object], silence: Callable[[], None] | None) -> None:
        """`stop` starts the orderly stop (thread-safe, e.g. call_soon_threadsafe); `silence`
        ends the answering at once. A signal that came before is acted on now."""
        with self._lock:
            self._stop, self._silence = stop, silence
            pending = self.requested_at is not None
        if pending:
            self._act()

    def finished(self) -> None:
        """The orderly stop is over: the watchdog stands down."""
        self._done.set()

    # --- in the signal handler: nothing that takes a lock or waits ---------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested_at is not None:
            os.write(2, b"raftlb agent: second signal, stopping now\n")
            self._exit_now(FORCED_EXIT)
            return
        self.requested_at = time.monotonic()
        name = signal.Signals(signum).name
        threading.Thread(target=self._run, args=(name,), name="stop", daemon=True).start()

    # --- the stop thread ---------------------------------------------------------------------

    def _run(self, name: str) -> None:
        log.info("%s: stopping (answering nothing from now on)", name)
        self._act()
        if self._done.wait(self.bound):
            return
        log.critical(
            "the stop did not finish within %.0f s of %s (stuck: %s): exiting now; the next "
            "start replaces what it left (nftables tables)",
            self.bound,
            name,
            ", ".join(t.name for t in threading.enumerate() if t is not threading.current_thread())
            or "nothing",
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        self._exit_now(FORCED_EXIT)

    def _act(self) -> None:
        with self._lock:
            silence, stop = self._silence, self._stop
        if silence is not None and self.silenced_at is None:
            try:
                silence()
            except Exception:  # never let it keep the stop from going on
                log.exception("silencing the announcer failed; stopping anyway")
            self.silenced_at = time.monotonic()
        if stop is not None:
            stop()
