"""The agent's stop under load: a SIGTERM'd owner answers nothing 100 ms later, and exits.

The orderly stop of an `l2+bgp` node withdraws its BGP routes first and waits for the UPDATE
to leave; the layer-2 announcer (a thread of its own) kept answering ARP all that time, and
once for 5 s when a task swallowed its cancellation. Both cores are kept busy meanwhile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from appliance.lab import topology
from appliance.lab.settle import settle
from appliance.stopper import STOP_BOUND
from tests.lab.labkit import MakeLab, wait_for
from tests.lab.test_lab_ownership import Watch, macs, setup_vips

pytestmark = pytest.mark.timeout(240)
SILENT_WITHIN = 0.1
HOG = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"


@contextmanager
def cpu_hog(seconds: float, cores: int = 2) -> Iterator[None]:
    """A busy loop per core for at most `seconds` (bounded, and killed on the way out)."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(s=seconds)]) for _ in range(cores)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=10)


def test_a_sigtermed_owner_under_load_stops_answering_at_once_and_exits(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(router="bird")
    vips = setup_vips(lab)
    leader = lab.wait_leader()
    # A routed VIP too: the stop then has routes to withdraw before it ends.
    pool = {"addresses": [topology.BGP_VIPS4], "announce": "bgp"}
    assert lab.api(leader, "PUT", "/v1/pools/routed", pool) is not None
    backends = [
        {"address": str(h.ipv4), "port": topology.BACKEND_HTTP_PORT}
        for h in lab.plan.of_kind("backend")
    ]  # healthy backends: the route is announced, so the stop has it to withdraw
    body = {"pool": "routed", "ports": [{"port": 80, "backends": backends}]}
    routed = lab.api(leader, "PUT", "/v1/services/t/default/routed", body)
    assert routed is not None
    wait_for(lambda: len(lab.next_hops(str(routed["address"]))) == 3 or None, 30, "routed VIP")
    owner = settle(lab, vips).owners[vips[0]]  # not a VIP the leader is still handing over
    names = macs(lab)
    pid = lab.pid(f"agent-{owner}")
    assert pid is not None
    with cpu_hog(8.0):
        watch = Watch(lab, vips, seconds=4.0, host="router")
        time.sleep(1.0)
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not lab.agent_alive(owner) or None, STOP_BOUND + 15, f"{owner} to exit")
        exited = time.monotonic() - sent
        replies = watch.finish()
    mine = [r for r in replies if names.get(r.mac) == owner]
    last = max((r.at for r in mine), default=sent) - sent
    print(f"{owner}: last answer {last * 1000:.0f} ms after SIGTERM, exited after {exited:.2f}s")
    assert mine, f"{owner} never answered: the watch sees nothing"
    late = [r for r in mine if r.at > sent + SILENT_WITHIN]
    assert not late, f"{owner} answered {len(late)} time(s) later than {SILENT_WITHIN}s: {late[:3]}"
    assert exited < STOP_BOUND + 5
