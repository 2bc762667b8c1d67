"""The Raft tick thread's CPU priority (appliance/priority.py), in a child process so that
pytest keeps its own."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from appliance import priority

# A thread waits while the main thread raises it by its kernel id; both report their nice.
RAISE = """
import os, threading
from appliance.priority import raise_priority
go, done = threading.Event(), threading.Event()
seen = []
def tick():
    go.wait()
    seen.append(os.getpriority(os.PRIO_PROCESS, 0))
    done.set()
t = threading.Thread(target=tick)
t.start()
print(raise_priority(t.native_id), end=" ")
go.set(); done.wait()
print(seen[0], os.getpriority(os.PRIO_PROCESS, 0))
"""


def run(start_nice: int) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", RAISE],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, start_nice),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs root (CAP_SYS_NICE)")
def test_only_the_thread_named_is_raised_and_never_lowered() -> None:
    tick = str(priority.TICK_NICE)
    assert run(0) == [tick, tick, "0"]  # the thread at -10, the rest of the process as it was
    assert run(-15) == ["-15", "-15", "-15"]  # already higher (inherited): left as it is


def test_a_refusal_is_logged_with_what_to_do_and_the_agent_runs_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "getpriority", lambda *_: 0)
    monkeypatch.setattr(os, "setpriority", refuse)
    with caplog.at_level(logging.WARNING, "raftlb.agent"):
        assert priority.raise_priority(1234) == 0
    assert "LimitNICE=30" in caplog.text and "Operation not permitted" in caplog.text
    assert priority.raise_priority(None) is None  # no tick thread (yet): nothing to do
