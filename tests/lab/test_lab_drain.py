"""A planned drain in layer-2 mode loses nothing where timing is real (namespaces, real ARP):
a client probing the VIP every 10 ms sees no failed request while its owner is drained, and
the VIP is never answered from two MACs. (The image test drains emulated VMs, whose commits
take seconds: there it checks that the move completes and service resumes.)"""

from __future__ import annotations

from typing import Any

import pytest

from appliance.lab.bench_failover import drain_run, setup_services
from tests.lab.labkit import MakeLab

pytestmark = pytest.mark.timeout(300)


def test_a_planned_drain_loses_no_request(make_lab: MakeLab) -> None:
    lab = make_lab()
    vips = setup_services(lab)
    runs: list[dict[str, Any]] = [drain_run(lab, vips, n) for n in range(2)]
    print(f"\nplanned drains: {runs}")
    for run in runs:
        assert run["outage_s"] == 0, run
        assert not run["two_macs"], run
        assert run["takeover_s"] is not None, run
