"""The agent's CPU priority (appliance/priority.py), in a child process so pytest keeps its own."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from appliance import priority

RAISE = "from appliance.priority import raise_priority; import os; print(raise_priority(), "
RAISE += "os.getpriority(os.PRIO_PROCESS, 0))"


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs root (CAP_SYS_NICE)")
def test_the_agent_raises_its_own_priority_once_and_never_lowers_it() -> None:
    raised = subprocess.run(
        [sys.executable, "-c", RAISE],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, 0),
    )
    assert raised.stdout.split() == [str(priority.AGENT_NICE)] * 2, raised.stderr
    # Already higher (a unit with Nice=-15): left as it is. (Absolute values: this process may
    # have run an agent in-process already, which raised its own priority.)
    higher = subprocess.run(
        [sys.executable, "-c", RAISE],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, -15),
    )
    assert higher.stdout.split() == ["-15", "-15"], higher.stderr


def test_a_refusal_is_logged_with_what_to_do_and_the_agent_runs_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "getpriority", lambda *_: 0)
    monkeypatch.setattr(os, "setpriority", refuse)
    with caplog.at_level(logging.WARNING, "raftlb.agent"):
        assert priority.raise_priority() == 0
    assert "Nice=-10" in caplog.text and "Operation not permitted" in caplog.text
