"""appliance.tally: the first event is logged at once, the next ones once per interval."""

from __future__ import annotations

import pytest

from appliance import tally as tally_module
from appliance.tally import Tally


def test_counts_are_said_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(tally_module.time, "monotonic", lambda: now[0])
    tally = Tally(every=10.0)
    assert tally.add("idle") == ({"idle": 1}, 10.0)
    for _ in range(5):
        now[0] += 1
        assert tally.add("idle") is None
    assert tally.add("full") is None
    now[0] += 5  # 11 s after the last line
    assert tally.add("idle") == ({"idle": 6, "full": 1}, 10.0)
    now[0] += 30
    assert tally.add("full") == ({"full": 1}, 10.0)
