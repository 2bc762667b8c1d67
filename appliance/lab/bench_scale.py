"""`raftlb lab bench scale`: the control plane with thousands of services, in the namespace lab.

One lab (3 nodes, `announce: l2`, real nftables, default timing). An HTTP service on an IPv4
VIP is probed from the client every 10 ms for the whole run, while services with `--backends`
backends each are written through `POST /v1/apply` in batches of `--batch`. At each checkpoint
(1,000, 2,000 and the last): apply time per command (p50/p99, every node, from /metrics), one
service written 20 times (write latency, and the owner's ruleset delta time), `GET /v1/vips` and
`/v1/status` latency, each agent's RSS, elections (term changes) and VIP owner changes by
reason since the start, and the probed VIP's outage. At the end: a full ruleset load (a shard
table deleted by hand on a node, then repaired by the next change), a follower stopped long
enough for the leader to compact its log and then restarted (it installs the snapshot: how
long, and whether any other node lost a lease), and a kill -9 and restart of every agent (how
long until every node's state is back).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from appliance.dataplane.render import shard_table
from appliance.lab import LabError, procs, topology
from appliance.lab.netlab import NetLab, Progress
from appliance.lab.outage import outages, percentile
from appliance.lab.prober import read_samples
from appliance.lab.scale import (
    POOL,
    LabClient,
    buckets,
    bulk_spec,
    quantile,
    rss_mib,
    scrape,
    takeovers,
    wait_services,
    write_bulk,
)

CHECKPOINTS = (1000, 2000)
SETTLE = 3.0
WRITES = 100  # one-service writes per checkpoint
# Low enough that the leader compacts its log while a follower is away for a minute.
COMPACTION_ENTRIES = 2000
COMPACTION_INTERVAL = 60  # nodes compact in turn, each in its own slot of this interval


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 2)


def _p(values: list[float], q: float) -> float | None:
    return _ms(percentile(values, q)) if values else None


def _probe_service(lab: NetLab, client: LabClient, leader: str) -> str:
    pool = {"addresses": [topology.L2_VIPS4], "default": True}
    client.ok(leader, "PUT", "/v1/pools/lan", pool)
    backends = [
        {"address": str(h.ipv4), "port": topology.BACKEND_HTTP_PORT}
        for h in lab.plan.of_kind("backend")
    ]
    body = {"ports": [{"port": 80, "backends": backends}]}
    return str(client.ok(leader, "PUT", "/v1/services/scale/probe/web", body).body["address"])


def _terms(client: LabClient, nodes: list[str]) -> dict[str, int]:
    out = {}
    for node in nodes:
        answer = client.call(node, "GET", "/v1/status")
        if answer.status == 200:
            out[node] = int(answer.body["raft"]["term"])
    return out


def _owner(client: LabClient, node: str, vip: str) -> str | None:
    for entry in client.ok(node, "GET", "/v1/vips").body:
        if entry["address"] == vip:
            return str(entry["node"]) if entry["node"] else None
    return None


class Run:
    def __init__(self, lab: NetLab, client: LabClient, progress: Progress) -> None:
        self.lab, self.client, self.progress = lab, client, progress
        self.nodes = lab.node_names()
        self.scrapes = {n: scrape(client, n) for n in self.nodes}
        self.start_terms = _terms(client, self.nodes)
        self.start_takeovers = takeovers(client, self.nodes)
        self.changed = 0

    def checkpoint(self, count: int, batches: list[float], probe_vip: str) -> dict[str, Any]:
        client, nodes = self.client, self.nodes
        now = {n: scrape(client, n) for n in nodes}
        per_command = [
            quantile(
                buckets(self.scrapes[n], "raftlb_raft_apply_command_seconds"),
                buckets(now[n], "raftlb_raft_apply_command_seconds"),
                q,
            )
            for n in nodes
            for q in (0.5, 0.99)
        ]
        by_command: dict[str, float | None] = {}
        for kind in ("batch", "service.put", "vips.assign", "lease.renew", "member.report"):
            found = [
                quantile(
                    buckets(self.scrapes[n], "raftlb_raft_apply_seconds", command=kind),
                    buckets(now[n], "raftlb_raft_apply_seconds", command=kind),
                    0.99,
                )
                for n in nodes
            ]
            by_command[kind] = _ms(max((v for v in found if v is not None), default=None))
        lag_p99 = [
            quantile(
                buckets(self.scrapes[n], "raftlb_raft_tick_lag_seconds"),
                buckets(now[n], "raftlb_raft_tick_lag_seconds"),
                0.99,
            )
            for n in nodes
        ]
        self.scrapes = now
        writes, owner = self._one_service_writes()
        # The first answer of each node after the writes makes every new entry (cold); the
        # next ones reuse them.
        cold = [client.ok(n, "GET", "/v1/vips").seconds for n in nodes]
        vips = [client.ok(nodes[i % 3], "GET", "/v1/vips").seconds for i in range(9)]
        status = [client.ok(nodes[i % 3], "GET", "/v1/status").seconds for i in range(12)]
        terms = _terms(client, nodes)
        moves = takeovers(client, nodes)
        rss = {n: rss_mib(self.lab, n) for n in nodes}
        result: dict[str, Any] = {
            "services": count,
            "batch_seconds_p50": round(percentile(batches, 50), 3) if batches else None,
            "batch_seconds_max": round(max(batches), 3) if batches else None,
            "apply_command_ms_p50": _ms(max(v for v in per_command[0::2] if v is not None)),
            "apply_command_ms_p99": _ms(max(v for v in per_command[1::2] if v is not None)),
            "apply_entry_ms_p99": by_command,
            "tick_lag_ms_p99": _ms(max((v for v in lag_p99 if v is not None), default=None)),
            "write_ms_p50": _p(writes["write"], 50),
            "write_ms_p99": _p(writes["write"], 99),
            "ruleset_delta_ms_p50": _ms(writes["delta_p50"]),
            "ruleset_delta_ms_p99": _ms(writes["delta_p99"]),
            "ruleset_owner": owner,
            "get_vips_ms_first_max": _ms(max(cold)),
            "get_vips_ms_p50": _p(vips, 50),
            "get_vips_ms_p99": _p(vips, 99),
            "get_status_ms_p50": _p(status, 50),
            "get_status_ms_p99": _p(status, 99),
            "rss_mib": rss,
            "elections": sum(terms.get(n, 0) - self.start_terms.get(n, 0) for n in nodes) // 3,
            "term": max(terms.values(), default=None),
            "owner_changes": {
                k: int(v - self.start_takeovers.get(k, 0.0))
                for k, v in sorted(moves.items())
                if v - self.start_takeovers.get(k, 0.0)
            },
        }
        line = (
            f"{count} services: apply/command p50 {result['apply_command_ms_p50']} ms, "
            f"p99 {result['apply_command_ms_p99']} ms; write p99 {result['write_ms_p99']} ms; "
            f"ruleset delta p99 {result['ruleset_delta_ms_p99']} ms; GET /v1/vips p99 "
            f"{result['get_vips_ms_p99']} ms; RSS {max(v or 0 for v in rss.values())}"
            f" MiB; elections {result['elections']}; owner changes {result['owner_changes']}"
        )
        self.progress(line)
        return result

    def _one_service_writes(self) -> tuple[dict[str, Any], str | None]:
        """Service 0 written 100 times with one backend port changed; its owner's deltas (20
        writes made the p99 their maximum: one write in a hundred takes up to ~140 ms)."""
        client, nodes = self.client, self.nodes
        vip = str(client.ok(nodes[0], "GET", "/v1/services/scale/bulk/s0").body["address"])
        owner = _owner(client, nodes[0], vip)
        before = scrape(client, owner) if owner else {}
        took = []
        for _ in range(WRITES):
            self.changed += 1
            spec = bulk_spec(0, port_offset=self.changed)
            took.append(client.ok(nodes[0], "PUT", "/v1/services/scale/bulk/s0", spec).seconds)
        deltas: dict[str, Any] = {"write": took, "delta_p50": None, "delta_p99": None}
        if owner:
            time.sleep(0.5)  # the last change reaches the owner's kernel
            after = scrape(client, owner)
            name = "raftlb_ruleset_update_seconds"
            old, new = buckets(before, name, kind="delta"), buckets(after, name, kind="delta")
            deltas["delta_p50"] = quantile(old, new, 0.5)
            deltas["delta_p99"] = quantile(old, new, 0.99)
        return deltas, owner


def _full_load(run: Run) -> dict[str, Any]:
    """Delete a shard table by hand on the owner of service 0; its next change fails and the
    whole table is loaded again: how long that load took."""
    client = run.client
    vip = str(client.ok(run.nodes[0], "GET", "/v1/services/scale/bulk/s0").body["address"])
    owner = _owner(client, run.nodes[0], vip)
    if owner is None:
        raise LabError(f"{vip} has no owner")
    loads = client.ok(owner, "GET", "/v1/status").body["dataplane"]["loads"]
    run.lab.exec(owner, ["nft", "delete", "table", "inet", shard_table(ipaddress.ip_address(vip))])
    run.changed += 1
    spec = bulk_spec(0, port_offset=run.changed)
    client.ok(run.nodes[0], "PUT", "/v1/services/scale/bulk/s0", spec)
    deadline = time.monotonic() + 120
    while True:
        plane = client.ok(owner, "GET", "/v1/status").body["dataplane"]
        if plane["loaded"] and plane["loads"] > loads:
            break
        if time.monotonic() > deadline:
            raise LabError(f"{owner} did not load its ruleset again within 120 s")
        time.sleep(0.2)
    return {
        "node": owner,
        "vips": plane["vips"],
        "seconds": round(plane["last_update_ms"]["full"] / 1000, 3),
    }


def _lagging_node(run: Run, total: int) -> dict[str, Any]:
    """A follower away until the leader compacted its log, then back: it installs the
    snapshot. VIPs taken over for `dead` on the other nodes meanwhile: a lost lease."""
    lab, client = run.lab, run.client
    leader = lab.wait_leader()
    follower = next(n for n in run.nodes if n != leader)
    others = [n for n in run.nodes if n != follower]
    lab.crash(follower, "kill")
    wait = COMPACTION_INTERVAL + 20  # the leader's slot comes once per interval
    run.progress(f"stopped {follower}; waiting {wait} s for the leader to compact its log")
    time.sleep(wait)
    before = takeovers(client, others)
    terms = _terms(client, others)
    started = time.monotonic()
    lab.start_agent(follower)
    took = wait_services(client, [follower], total, timeout=120)[follower]
    # Back in service: it takes its share (after its warm-up, in paced steps).
    deadline, share = time.monotonic() + 120, total // len(run.nodes) - 1
    while True:
        counts = {n["id"]: n["vips"] for n in client.ok(others[0], "GET", "/v1/nodes").body}
        if counts.get(follower, 0) >= share:
            break
        if time.monotonic() > deadline:
            raise LabError(f"{follower} did not get its share of VIPs back: {counts}")
        time.sleep(0.2)
    balanced = time.monotonic() - started
    time.sleep(1.0)
    after = takeovers(client, others)
    installed = "loaded from a full dump" in lab.log_path(f"agent-{follower}").read_text()
    return {
        "node": follower,
        "seconds": round(took, 2),
        "from_snapshot": installed,
        "balanced_s": round(balanced, 2),
        "others_dead_takeovers": int(after.get("dead", 0) - before.get("dead", 0)),
        "elections": sum(_terms(client, others).get(n, 0) - terms.get(n, 0) for n in others),
    }


def _restart_all(run: Run, total: int) -> dict[str, Any]:
    lab = run.lab
    for node in run.nodes:
        lab.crash(node, "kill")
    started = time.monotonic()
    for node in run.nodes:
        lab.start_agent(node)
    took = wait_services(run.client, run.nodes, total, timeout=180)
    leader_at = None
    try:
        lab.wait_leader(timeout=60)
        leader_at = time.monotonic() - started
    except LabError:
        pass
    return {
        "state_restored_s": {n: round(t, 2) for n, t in sorted(took.items())},
        "max_s": round(max(took.values()), 2),
        "leader_s": round(leader_at, 2) if leader_at is not None else None,
    }


def bench_scale(
    base: Path,
    services: int,
    backends: int,
    batch: int,
    progress: Progress,
    keep_logs: bool = False,
) -> dict[str, Any]:
    lab = NetLab.up(nodes=3, backends=2, base=base, progress=progress, start_agents=False)
    client = None
    prober = None
    try:
        for node in lab.node_names():
            path = lab.config_path(node)
            config = yaml.safe_load(path.read_text())
            config.setdefault("raft", {})["log_compaction_entries"] = COMPACTION_ENTRIES
            config["raft"]["log_compaction_interval"] = COMPACTION_INTERVAL
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            lab.start_agent(node)
        leader = lab.wait_leader(timeout=60)
        client = LabClient(lab)
        probe_vip = _probe_service(lab, client, leader)
        client.ok(leader, "PUT", "/v1/pools/scale", POOL)
        out = lab.dir / "probe.jsonl"
        argv = [sys.executable, "-m", "appliance.lab.prober", "--target", probe_vip]
        prober = lab.spawn("prober", "client", [*argv, "--port", "80", "--out", str(out)])
        time.sleep(1.0)
        run = Run(lab, client, progress)
        marks = sorted({c for c in CHECKPOINTS if c < services} | {services})
        results, done, started = [], 0, time.monotonic()

        def each(written: int, seconds: float) -> None:
            if written % 1000 == 0 or written == services:
                progress(f"[{written}/{services}] services written (batch {seconds:.2f}s)")

        for mark in marks:
            took = write_bulk(client, lab.node_names()[0], done, mark, batch, backends, each)
            done = mark
            wait_services(client, run.nodes, done + 1, timeout=120)  # + the probed one
            time.sleep(SETTLE)  # measured at N services, not in the tail of the last batches
            results.append(run.checkpoint(done, took, probe_vip))
        write_seconds = time.monotonic() - started
        _stop(prober)
        procs.reap(prober, timeout=30)
        prober = None
        samples = read_samples(out)
        found = outages(samples)
        probe = {
            "vip": probe_vip,
            "requests": len(samples),
            "failed": sum(1 for s in samples if not s.ok),
            "outages_ms": [round(1000 * o.duration, 1) for o in found],
        }
        progress(f"probed {probe_vip}: {probe['failed']} of {probe['requests']} requests failed")
        full = _full_load(run)
        progress(f"full ruleset load on {full['node']}: {full['vips']} VIPs in {full['seconds']}s")
        lagging = _lagging_node(run, done + 1)
        progress(
            f"{lagging['node']} back after its log was compacted: state in {lagging['seconds']}s "
            f"(snapshot: {lagging['from_snapshot']}); dead takeovers elsewhere "
            f"{lagging['others_dead_takeovers']}"
        )
        restart = _restart_all(run, done + 1)
        progress(f"kill -9 of every agent and restart: state back in {restart['max_s']}s")
        return {
            "services": services,
            "backends": backends,
            "batch": batch,
            "write_seconds": round(write_seconds, 1),
            "checkpoints": results,
            "probe": probe,
            "full_load": full,
            "lagging_node": lagging,
            "restart": restart,
        }
    finally:
        if prober is not None:
            _stop(prober)
        if client is not None:
            client.close()
        lab.down(progress=progress if keep_logs else lambda _: None, keep_logs=keep_logs)


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def render_scale(result: dict[str, Any]) -> str:
    lines = [
        f"{result['services']} services x {result['backends']} backends in batches of "
        f"{result['batch']} ({result['write_seconds']} s)",
        f"{'services':>8} {'apply p50':>9} {'apply p99':>9} {'write p99':>9} {'delta p99':>9} "
        f"{'vips 1st':>9} {'vips p99':>9} {'status p99':>10} {'RSS MiB':>8} {'elections':>9}"
        "  owner changes",
    ]
    for c in result["checkpoints"]:
        rss = max((v or 0) for v in c["rss_mib"].values())
        lines.append(
            f"{c['services']:>8} {c['apply_command_ms_p50']!s:>9} {c['apply_command_ms_p99']!s:>9} "
            f"{c['write_ms_p99']!s:>9} {c['ruleset_delta_ms_p99']!s:>9} "
            f"{c['get_vips_ms_first_max']!s:>9} {c['get_vips_ms_p99']!s:>9} "
            f"{c['get_status_ms_p99']!s:>10} {rss:>8} "
            f"{c['elections']:>9}  {c['owner_changes'] or '-'}"
        )
    probe, full = result["probe"], result["full_load"]
    lag, restart = result["lagging_node"], result["restart"]
    lines += [
        "(ms; apply = per command, on the slowest node; delta = the owner's ruleset change "
        "for one service; vips 1st = a node's first answer after the writes)",
        f"probed VIP {probe['vip']}: {probe['failed']} of {probe['requests']} requests failed, "
        f"outages {probe['outages_ms'] or 'none'}",
        f"full ruleset load ({full['vips']} VIPs on {full['node']}): {full['seconds']} s",
        f"lagging node {lag['node']}: state back in {lag['seconds']} s "
        f"(from a snapshot: {lag['from_snapshot']}), its share of VIPs back after "
        f"{lag['balanced_s']} s; dead takeovers on the others {lag['others_dead_takeovers']}, "
        f"elections {lag['elections']}",
        f"kill -9 and restart of every agent: state back in {restart['max_s']} s "
        f"(leader after {restart['leader_s']} s)",
    ]
    return "\n".join(lines)


def main_scale(
    base: Path,
    services: int,
    backends: int,
    batch: int,
    as_json: bool,
    progress: Progress,
    keep_logs: bool = False,
) -> str:
    result = bench_scale(base, services, backends, batch, progress, keep_logs)
    return json.dumps(result, indent=2) if as_json else render_scale(result)
