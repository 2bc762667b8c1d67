"""Thousands of services in a lab: writing them, and reading what the agents say about it.

Shared by `raftlb lab bench scale` and the lab test that writes 2,000 services while VIPs fail
over. The services are IPv6 (the lab's IPv4 documentation ranges hold 768 addresses) on a
layer-2 pool inside the LAN's /64, each with `backends` backends that are never probed (their
health check is `none`: the control plane is measured, not 50,000 TCP checks a second).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from appliance.lab import LabError
from appliance.lab.netlab import NetLab

POOL = {"name": "scale", "addresses": ["2001:db8:1:0:5::/96"]}


def bulk_spec(i: int, backends: int = 10, port_offset: int = 0) -> dict[str, Any]:
    return {
        "id": f"scale/bulk/s{i}",
        "pool": "scale",
        "ip_family": "ipv6",
        "ports": [
            {
                "port": 80,
                "backends": [
                    {"address": f"2001:db8:3::{b + 1:x}", "port": 30000 + (i + port_offset) % 2000}
                    for b in range(backends)
                ],
            }
        ],
        "health_check": {"type": "none"},
    }


@dataclass
class Answer:
    seconds: float
    status: int
    body: Any


class LabClient:
    """HTTP calls to the agents from inside the client's namespace (one thread, one session)."""

    def __init__(self, lab: NetLab, timeout: float = 30.0) -> None:
        self.lab = lab
        self.timeout = timeout
        self.thread = lab.in_ns("client")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {lab.token()}"

    def close(self) -> None:
        self.session.close()
        self.thread.close()

    def call(self, node: str, method: str, path: str, body: Any = None) -> Answer:
        def ask() -> Answer:
            started = time.monotonic()
            response = self.session.request(
                method, f"{self.lab.api_url(node)}{path}", json=body, timeout=self.timeout
            )
            took = time.monotonic() - started
            try:
                data = response.json()
            except ValueError:
                data = response.text
            return Answer(took, response.status_code, data)

        try:
            return self.thread.run(ask)
        except requests.RequestException as exc:
            return Answer(0.0, 0, str(exc))

    def ok(self, node: str, method: str, path: str, body: Any = None) -> Answer:
        answer = self.call(node, method, path, body)
        if answer.status != 200:
            raise LabError(f"{method} {path} on {node}: HTTP {answer.status} {answer.body}")
        return answer


def write_bulk(
    client: LabClient,
    node: str,
    start: int,
    stop: int,
    batch: int = 100,
    backends: int = 10,
    each: Callable[[int, float], None] = lambda done, seconds: None,
) -> list[float]:
    """Services start..stop-1 through /v1/apply in batches; the seconds of each batch."""
    took = []
    for first in range(start, stop, batch):
        body = {
            "services": [bulk_spec(i, backends) for i in range(first, min(stop, first + batch))]
        }
        answer = client.ok(node, "POST", "/v1/apply", body)
        took.append(answer.seconds)
        each(min(stop, first + batch), answer.seconds)
    return took


# -- reading /metrics -------------------------------------------------------------------------


Families = dict[str, list[tuple[str, dict[str, str], float]]]


def scrape(client: LabClient, node: str) -> Families:
    """The node's /metrics as {family: [(sample name, labels, value)]}."""
    answer = client.ok(node, "GET", "/metrics")
    out: Families = {}
    for family in text_string_to_metric_families(str(answer.body)):
        out[family.name] = [(s.name, dict(s.labels), s.value) for s in family.samples]
    return out


def buckets(families: Families, name: str, **labels: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts {upper bound: count}."""
    out: dict[float, float] = {}
    for sample, have, value in families.get(name, []):
        if sample.endswith("_bucket") and all(have.get(k) == v for k, v in labels.items()):
            bound = float(have["le"])
            out[bound] = out.get(bound, 0.0) + value
    return out


def quantile(before: Mapping[float, float], after: Mapping[float, float], q: float) -> float | None:
    """The q-quantile of what a histogram observed between two scrapes (linear interpolation
    inside the bucket, as Prometheus' histogram_quantile does); None when nothing was."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def by_label(families: Families, name: str, label: str) -> dict[str, float]:
    """A counter's (or gauge's) values by one label."""
    out: dict[str, float] = {}
    for sample, labels, value in families.get(name, []):
        if sample.endswith("_created"):
            continue
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


def value(families: Families, family: str, sample: str | None = None) -> float:
    """The sum of a family's samples (of one sample name, e.g. a histogram's `_count`)."""
    return sum(
        v
        for s, _, v in families.get(family, [])
        if (s == sample if sample else not s.endswith("_created"))
    )


def takeovers(client: LabClient, nodes: list[str]) -> dict[str, float]:
    """VIP takeovers by reason, summed over the nodes."""
    total: dict[str, float] = {}
    for node in nodes:
        # The parser names a counter's family without `_total`.
        found = by_label(scrape(client, node), "raftlb_vip_takeovers", "reason")
        for reason, count in found.items():
            total[reason] = total.get(reason, 0.0) + count
    return total


def rss_mib(lab: NetLab, node: str) -> float | None:
    pid = lab.pid(f"agent-{node}")
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), None)
    return round(int(line.split()[1]) / 1024, 1) if line else None


def wait_services(
    client: LabClient, nodes: list[str], count: int, timeout: float
) -> dict[str, float]:
    """Wait until every node's state has `count` services; seconds each node took."""
    started = time.monotonic()
    done: dict[str, float] = {}
    while len(done) < len(nodes):
        for node in nodes:
            if node in done:
                continue
            answer = client.call(node, "GET", "/v1/status")
            body = answer.body if isinstance(answer.body, dict) else {}
            if answer.status == 200 and body.get("services") == count:
                done[node] = time.monotonic() - started
        if time.monotonic() - started > timeout:
            missing = sorted(set(nodes) - set(done))
            raise LabError(f"{missing} did not reach {count} services within {timeout:g}s")
        time.sleep(0.1)
    return done
