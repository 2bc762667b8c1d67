"""appliance.tally: the first event is logged at once, the next ones once per interval."""

from __future__ import annotations

import pytest

from appliance import tally as tally_module
from appliance.tally import Tally, listed


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


def test_listed_names_a_few_and_counts_the_rest() -> None:
    assert listed([]) == ""
    assert listed(["a", "b"]) == "a, b"
    assert listed([f"v{i}" for i in range(1667)]) == "v0, v1, v2, v3, v4 and 1662 more"
    assert listed(["x (1)", "y (2)", "z"], shown=2, sep="; ") == "x (1); y (2) and 1 more"
