"""What /metrics exports, scraped as Prometheus would: running totals are Counters named
`_total`, values are read at scrape time from the parts that count them."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from announce.l2_logic import STATS
from appliance.metrics import Metrics
from k8s_sync.cli import _SyncCollector
from tests.support.fake_announcer import FakeAnnouncer
from tests.support.fake_cluster import InMemoryCluster
from tests.unit.announce.test_l2_logic import OTHER, OURS, V4, Clock


def scrape(text: bytes) -> dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]:
    """{sample name: (family type, {labels: value})}, as a scraper reads the text."""
    out: dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            _, values = out.setdefault(sample.name, (family.type, {}))
            values[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_exabgp_restarts_and_refused_commands_are_counters() -> None:
    metrics = Metrics(InMemoryCluster())
    status = {"announcing": True, "peers": {}, "routes": [], "restarts": 2, "errors": 5}
    metrics.watch_bgp(lambda: status)
    found = scrape(metrics.render())
    assert found["raftlb_bgp_exabgp_restarts_total"] == ("counter", {(): 2.0})
    assert found["raftlb_bgp_command_errors_total"] == ("counter", {(): 5.0})
    assert "raftlb_bgp_exabgp_restarts" not in found
    status["restarts"] = 3  # read at scrape time
    assert scrape(metrics.render())["raftlb_bgp_exabgp_restarts_total"][1] == {(): 3.0}


def _informer(name: str, lists: int, failures: int) -> SimpleNamespace:
    synced = threading.Event()
    synced.set()
    return SimpleNamespace(name=name, lists=lists, failures=failures, synced=synced)


def test_k8s_sync_totals_are_counters() -> None:
    syncer: Any = SimpleNamespace(
        reconciled=40,
        failures=1,
        queue=[1, 2],
        services=_informer("services", 2, 1),
        slices=_informer("endpointslices", 1, 0),
        nodes=_informer("nodes", 1, 0),
    )
    registry = CollectorRegistry()
    registry.register(_SyncCollector(cast(Any, syncer)))
    found = scrape(generate_latest(registry))
    assert found["raftlb_k8s_reconciles_total"] == ("counter", {(): 40.0})
    assert found["raftlb_k8s_reconcile_failures_total"] == ("counter", {(): 1.0})
    kind = (("kind", "services"),)
    assert found["raftlb_k8s_lists_total"][0] == "counter"
    assert found["raftlb_k8s_lists_total"][1][kind] == 2.0
    assert found["raftlb_k8s_informer_failures_total"][1][kind] == 1.0
    assert found["raftlb_k8s_queue"] == ("gauge", {(): 2.0})
    assert not {"raftlb_k8s_reconciles", "raftlb_k8s_lists"} & set(found)


def test_l2_announcer_counters_are_exported_at_scrape_time() -> None:
    clock = Clock()
    fake = FakeAnnouncer("eth1", clock=clock, mac=OURS)
    metrics = Metrics(InMemoryCluster())
    metrics.watch_l2(fake.interface, fake.stats)
    fake.set([V4], 10.0)
    fake.heard_claim(V4, OTHER)
    fake.heard_claim(V4, OTHER)
    found = scrape(metrics.render())
    eth1 = (("interface", "eth1"),)
    assert found["raftlb_l2_conflicts_total"] == ("counter", {eth1: 2.0})
    assert found["raftlb_l2_takeovers_total"] == ("counter", {eth1: 1.0})
    assert found["raftlb_l2_vips_held"] == ("gauge", {eth1: 1.0})
    for key in STATS:  # every counter, alertable from the first scrape (0, not absent)
        assert found[f"raftlb_l2_{key}_total"][0] == "counter"
    clock.now = 10.0  # the lease lapses
    found = scrape(metrics.render())
    assert found["raftlb_l2_vips_held"][1] == {eth1: 0.0}


def test_l2_refusals_and_send_errors_are_exported() -> None:
    metrics = Metrics(InMemoryCluster())
    metrics.watch_l2("eth1", lambda: {"stale_refusals": 4, "send_errors": 1, "held": 0})
    found = scrape(metrics.render())
    eth1 = (("interface", "eth1"),)
    assert found["raftlb_l2_stale_refusals_total"][1] == {eth1: 4.0}
    assert found["raftlb_l2_send_errors_total"][1] == {eth1: 1.0}
