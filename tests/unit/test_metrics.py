"""What /metrics exports, scraped as Prometheus would: running totals are Counters named
`_total`, values are read at scrape time from the parts that count them."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.metrics import Metrics
from k8s_sync.cli import _SyncCollector
from raft.fake import InMemoryCluster


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
