"""`raftlb k8s-sync`: run the sync against one Kubernetes cluster and one appliance."""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.client import ApiClient, ClientConfigError, read_token
from k8s_sync import MISSING_CLIENT
from k8s_sync.translate import Options

if TYPE_CHECKING:
    from k8s_sync.syncer import Syncer

log = logging.getLogger("raftlb.k8s")
CLUSTER_NAME = re.compile(r"^[a-z0-9]([a-z0-9_.-]*[a-z0-9])?$")


class _SyncCollector(Collector):
    """The sync's counts, read at scrape time; running totals are Counters (`_total`), so
    `rate()` and `increase()` apply and a restart reads as a reset, not a drop."""

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer

    def collect(self) -> Iterator[Metric]:
        s = self.syncer
        yield CounterMetricFamily(
            "raftlb_k8s_reconciles", "Services reconciled since start", value=s.reconciled
        )
        yield CounterMetricFamily(
            "raftlb_k8s_reconcile_failures",
            "Reconcile batches that failed (retried later)",
            value=s.failures,
        )
        yield GaugeMetricFamily("raftlb_k8s_queue", "Services waiting", value=len(s.queue))
        synced = GaugeMetricFamily(
            "raftlb_k8s_informer_synced", "1 once the first list succeeded", labels=["kind"]
        )
        lists = CounterMetricFamily("raftlb_k8s_lists", "Full lists (relists)", labels=["kind"])
        failures = CounterMetricFamily(
            "raftlb_k8s_informer_failures",
            "Lists or watches that failed (the Kubernetes API unreachable or refusing)",
            labels=["kind"],
        )
        for informer in (s.services, s.slices, s.nodes):
            synced.add_metric([informer.name], float(informer.synced.is_set()))
            lists.add_metric([informer.name], informer.lists)
            failures.add_metric([informer.name], informer.failures)
        yield synced
        yield lists
        yield failures


def serve_health(syncer: Syncer, listen: str) -> ThreadingHTTPServer:
    """/healthz (200 once every informer listed) and /metrics, on a thread."""
    registry = CollectorRegistry()
    registry.register(_SyncCollector(syncer))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(registry), "text/plain; version=0.0.4")
            elif self.path == "/healthz":
                ready = all(
                    i.synced.is_set() for i in (syncer.services, syncer.slices, syncer.nodes)
                )
                self._send(
                    200 if ready else 503, b"ok\n" if ready else b"not synced\n", "text/plain"
                )
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    host, _, port = listen.rpartition(":")
    server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


@click.command("k8s-sync")
@click.option(
    "--kubeconfig",
    envvar="RAFTLB_KUBECONFIG",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--in-cluster", is_flag=True, help="Use the pod's service account.")
@click.option("--api", "api_url", envvar="RAFTLB_API", required=True, help="The appliance API.")
@click.option("--token-file", envvar="RAFTLB_TOKEN_FILE", required=True, type=Path)
@click.option(
    "--ca-file",
    envvar="RAFTLB_CA_FILE",
    type=Path,
    help="CA bundle of the appliance API's TLS certificate.",
)
@click.option(
    "--cluster-name",
    envvar="RAFTLB_CLUSTER_NAME",
    required=True,
    help="Prefix of this cluster's service ids.",
)
@click.option("--class", "klass", envvar="RAFTLB_CLASS", default="raftlb.io/lb", show_default=True)
@click.option(
    "--include-unclassed",
    is_flag=True,
    help="Also Services with no class, as MetalLB takes them by default (the migration mode).",
)
@click.option(
    "--backends",
    envvar="RAFTLB_BACKENDS",
    type=click.Choice(["nodes", "pods"]),
    default="nodes",
    show_default=True,
)
@click.option(
    "--listen",
    envvar="RAFTLB_LISTEN",
    default="0.0.0.0:9090",
    show_default=True,
    help="/healthz and /metrics",
)
@click.option("--resync", default=300.0, show_default=True, help="Seconds between full resyncs.")
@click.option(
    "--finalizer/--no-finalizer",
    envvar="RAFTLB_FINALIZER",
    default=True,
    show_default=True,
    help="Hold a Service's deletion (service.kubernetes.io/load-balancer-cleanup) until its VIP "
    "is released, as cloud controllers do; needs 'patch' on services.",
)
@click.option(
    "--owner-interval",
    envvar="RAFTLB_OWNER_INTERVAL",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between reads of where the VIPs are answered (the raftlb.io/vip-node "
    "annotation and the VIPFailover/VIPMoved Events); 0: off.",
)
def k8s_sync(
    kubeconfig: Path | None,
    in_cluster: bool,
    api_url: str,
    token_file: Path,
    ca_file: Path | None,
    cluster_name: str,
    klass: str,
    include_unclassed: bool,
    backends: str,
    listen: str,
    resync: float,
    finalizer: bool,
    owner_interval: float,
) -> None:
    """Import Services of type LoadBalancer (and their EndpointSlices and Nodes) into the
    appliance, and write the VIPs back into their status."""
    # Imported here: the kubernetes client costs ~0.4 s, which every other command would pay,
    # and it is an extra, missing where only agents run.
    try:
        from kubernetes import client, config

        from k8s_sync.syncer import CONCURRENCY, Syncer
    except ModuleNotFoundError as exc:
        if exc.name != "kubernetes":
            raise
        raise click.ClickException(MISSING_CLIENT) from None

    if not CLUSTER_NAME.match(cluster_name):
        raise click.BadParameter(
            f"{cluster_name!r}: lower-case letters, digits, '.', '_' and '-'",
            param_hint="--cluster-name",
        )
    if in_cluster:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None)  # type: ignore[no-untyped-call]
    try:
        appliance = ApiClient(
            api_url, read_token(token_file), verify=str(ca_file) if ca_file else True
        )
    except ClientConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configuration = client.Configuration.get_default_copy()
    # One connection per concurrent status patch (urllib3 would otherwise open and drop).
    configuration.connection_pool_maxsize = CONCURRENCY + 2
    kube = client.ApiClient(configuration)
    options = Options(
        cluster=cluster_name,
        load_balancer_class=klass,
        include_unclassed=include_unclassed,
        backends="pods" if backends == "pods" else "nodes",
        finalizer=finalizer,
    )
    syncer = Syncer(
        client.CoreV1Api(kube),
        client.DiscoveryV1Api(kube),
        appliance,
        options,
        resync,
        owner_interval=owner_interval,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    health = serve_health(syncer, listen)
    log.info("k8s-sync: cluster %s, class %s, appliance %s", cluster_name, klass, api_url)
    try:
        syncer.run(stop)
    finally:
        health.shutdown()
        appliance.close()
    sys.exit(0)
