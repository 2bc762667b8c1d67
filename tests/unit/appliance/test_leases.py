"""The ownership loops' reconcile pass over the in-memory cluster: what a node logs and counts
when it starts answering for a VIP (no agent, no root)."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest

from appliance.leases import NullAnnouncer, OwnershipLoops
from appliance.metrics import Metrics
from raft.timing import PROFILES
from tests.support.fake_cluster import InMemoryCluster
from tests.unit.appliance.test_reconciler import command, pools, put

ME, OLD = "n1", "n2"


def renew(loops: OwnershipLoops, cluster: InMemoryCluster, seq: int, sent_at: float) -> None:
    renewal = {"node": ME, "incarnation": loops.incarnation, "seq": seq, "sent_at": sent_at}
    assert cluster.state.apply(command("lease.renew", renewal=renewal))["ok"]


def assign(cluster: InMemoryCluster, vip: str, node: str, **placement: object) -> None:
    placements = {vip: {"node": node, **placement}}
    result = cluster.state.apply(command("vips.assign", placements=placements, at=time.time()))
    assert result["value"]["changed"] == [vip], result


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_vip_taken_back_after_a_lapsed_lease_is_no_failover(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = InMemoryCluster(ME, {ME: "127.0.0.1:7001", OLD: "127.0.0.1:7002"})
    metrics = Metrics(cluster)
    announcer = NullAnnouncer()
    loops = OwnershipLoops(
        cluster,
        metrics,
        [ME, OLD],
        dataclasses.replace(PROFILES["fast"], leases="commit"),
        announcer,
    )
    pools(cluster.state)
    vip = put(cluster.state, 1)
    assign(cluster, vip, OLD, reason="new")
    assign(cluster, vip, ME, reason="dead", dead_for=0.9)  # OLD died: a failover to ME
    caplog.set_level(logging.INFO, logger="raftlb.ownership")

    renew(loops, cluster, 1, sent_at=time.monotonic())
    await loops.reconcile()
    assert "failover: took " + vip in caplog.text
    assert sample(metrics, "raftlb_failover_seconds_count") == 1
    caplog.clear()

    renew(loops, cluster, 2, sent_at=time.monotonic() - 10)  # committed late: lapsed
    await loops.reconcile()
    assert announcer.vips == frozenset()
    renew(loops, cluster, 3, sent_at=time.monotonic())  # valid again, same assignment
    await loops.reconcile()

    assert {str(v) for v in announcer.vips} == {vip}
    assert "failover" not in caplog.text
    assert f"answering 1 VIP(s) again, the lease being valid again (same assignment): {vip}" in (
        caplog.text
    )
    assert sample(metrics, "raftlb_failover_seconds_count") == 1
    assert sample(metrics, "raftlb_vip_takeovers_total", reason="dead") == 1
    assert sample(metrics, "raftlb_vip_takeovers_total", reason="resumed") == 1
