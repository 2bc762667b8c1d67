"""Test order for the whole suite: the fast checks first, the appliance image last.

pytest collects folders alphabetically, which put the image build and VM boots (the slowest
part, minutes) before the unit tests: a broken unit test was then reported last.
"""

from __future__ import annotations

from pathlib import Path

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
