"""A helper daemon of the agent (exabgp, the BFD daemon), supervised: started, restarted, stopped.

The child runs in the foreground as the agent's child, in its process group and with a
parent-death signal, so a killed agent (kill -9 of its group, or of it alone) leaves no helper
announcing for a node that no longer decides anything. A child that exits is started again
after a backoff that grows while it keeps failing fast (`RESTART`); its output goes to the
agent's log at debug level, its exits at error level with what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence

from appliance.backoff import Backoff

RESTART = Backoff(first=0.5, cap=30.0)  # the wait before starting a child that exited
PR_SET_PDEATHSIG = 1
STABLE = 30.0  # a child that ran this long had not been failing: its backoff starts over


def die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Supervised:
    """`run()` keeps `argv` running until `stop()`; `on_exit` runs after every exit."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: logging.Logger,
        env: Mapping[str, str] | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.on_exit = on_exit
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def run(self) -> None:
        failures = 0  # exits in a row of a child that ran less than STABLE seconds
        while not self._stopping:
            started = time.monotonic()
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env=self.env,
                    preexec_fn=die_with_parent,
                )
            except OSError as exc:
                code: int | str = f"not started ({exc})"
            else:
                self.log.info("%s started (pid %d)", self.name, self.proc.pid)
                assert self.proc.stdout is not None
                async for line in self.proc.stdout:
                    self.log.debug("%s: %s", self.name, line.decode(errors="replace").rstrip())
                code = await self.proc.wait()
            if self.on_exit is not None:
                self.on_exit()
            if self._stopping:
                return
            failures = 1 if time.monotonic() - started > STABLE else failures + 1
            delay = RESTART.delay(failures)
            self.restarts += 1
            self.log.error(
                "%s exited with %s; restarting in %.1fs (restart %d). See the agent log at "
                "debug level for its output",
                self.name,
                code,
                delay,
                self.restarts,
            )
            await asyncio.sleep(delay)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop restarting it, then end it: SIGTERM, SIGKILL after `grace` seconds."""
        self._stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
