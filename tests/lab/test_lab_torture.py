"""A short `raftlb lab torture` campaign drawing from every fault kind, IPv4 and IPv6,
checked as the campaign's goals say: no dual owner, no lease lapse on untouched nodes, no
election that a fault of the leader does not explain. (The long campaign is a benchmark:
`raftlb lab torture --rounds 50 --ipv6`.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.lab.torture import torture
from appliance.lab.torture_report import KINDS, render

pytestmark = pytest.mark.timeout(900)  # skipped without root by tests/lab/conftest.py


def test_a_short_campaign_of_every_fault_kind(tmp_path: Path) -> None:
    result = torture(tmp_path, rounds=6, kinds=KINDS, seed=7, ipv6=True, progress=print)
    print(render(result))
    total = result["total"]
    assert total["rounds"] == 6
    assert total["requests_answered"] > 1000
    assert total["dual_owner_moments"] == 0, result["dual_owner"]
    assert total["untouched_lease_lapses"] == 0, result["rounds"]
    assert total["unexpected_elections"] == 0, result["rounds"]
