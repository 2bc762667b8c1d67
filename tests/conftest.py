"""Test order for the whole suite: the fast checks first, the appliance image last; and a
SIGTERM that still cleans up.

pytest collects folders alphabetically, which put the image build and VM boots (the slowest
part, minutes) before the unit tests: a broken unit test was then reported last.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import pytest

TESTS = Path(__file__).parent
ORDER = {"unit": 0, "k8s": 1, "integration": 2, "lab": 3, "image": 4}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        try:
            folder = item.path.relative_to(TESTS).parts[0]
        except ValueError:
            return len(ORDER)
        return ORDER.get(folder, len(ORDER))

    items.sort(key=rank)  # stable: each folder keeps its own order


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped with SIGTERM (`timeout`, a CI runner) died without its fixtures' teardown:
    # three emulated VMs and their namespace outlived it. As an interrupt, pytest unwinds the
    # test and tears every fixture down (namespaces, agents, VMs) before it exits.
    signal.signal(signal.SIGTERM, _interrupted)
