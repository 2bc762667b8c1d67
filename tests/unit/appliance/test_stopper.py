"""The agent's stop: silent at once, gone within a bound, with real signals to this process."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from appliance.stopper import FORCED_EXIT, Stopper


class Exits:
    """Stands in for os._exit: records the status instead of ending pytest."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.event = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.event.set()


@pytest.fixture
def exits() -> Exits:
    return Exits()


@pytest.fixture
def stopper(exits: Exits) -> Iterator[Stopper]:
    s = Stopper(bound=0.5, exit_now=exits)
    s.install()
    try:
        yield s
    finally:
        s.finished()
        s.uninstall()


def wait(event: threading.Event, what: str) -> None:
    assert event.wait(10), what


def test_a_signal_silences_at_once_then_stops_and_a_finished_stop_is_not_forced(
    stopper: Stopper, exits: Exits
) -> None:
    silenced, stopped = threading.Event(), threading.Event()
    stopper.attach(stopped.set, silenced.set)
    sent = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    wait(silenced, "silenced")
    wait(stopped, "stop started")
    assert stopper.silenced_at is not None and stopper.silenced_at - sent < 0.5
    stopper.finished()
    time.sleep(0.8)  # past the bound
    assert exits.codes == []


def test_a_stop_that_hangs_is_ended_after_the_bound(stopper: Stopper, exits: Exits) -> None:
    stopper.attach(lambda: None, None)  # the orderly stop never finishes
    sent = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    wait(exits.event, "forced exit")
    assert exits.codes == [FORCED_EXIT]
    assert 0.45 < time.monotonic() - sent < 5.0


def test_a_second_signal_ends_it_at_once(stopper: Stopper, exits: Exits) -> None:
    stopper.attach(lambda: None, None)
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    assert exits.codes == [FORCED_EXIT]  # from the handler itself, before the bound


def test_a_signal_before_the_loop_runs_is_acted_on_when_it_attaches(
    stopper: Stopper, exits: Exits
) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    silenced, stopped = threading.Event(), threading.Event()
    stopper.attach(stopped.set, silenced.set)
    assert silenced.is_set() and stopped.is_set()
    stopper.finished()


def test_the_silence_runs_outside_the_handler_so_a_lock_held_there_cannot_deadlock(
    stopper: Stopper, exits: Exits
) -> None:
    """The handler can interrupt the main thread while it holds the announcer's lock: the
    silence must wait for that lock in another thread, not in the handler."""
    lock = threading.Lock()
    silenced = threading.Event()

    def silence() -> None:
        with lock:
            silenced.set()

    stopper.attach(lambda: None, silence)
    with lock:  # the main thread holds it when the signal arrives
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert not silenced.is_set()
    wait(silenced, "silenced once the lock was free")
    stopper.finished()
