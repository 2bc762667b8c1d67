"""`raftlb lab bench dataplane`: requests per second and p99 latency through a VIP.

In one lab and one run: nginx (Debian) in a backend namespace serves a short answer; wrk in the
client loads it (a) directly, (b) through a raftlb VIP whose only backend it is (nftables DNAT on
the VIP's owner), and (c) through HAProxy in TCP mode on the same owner node, forwarding to the
same backend. Rounds alternate the three so drifts hit them alike; the medians are reported with
the ratios VIP/direct and VIP/HAProxy.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from appliance.lab import LabError, topology
from appliance.lab.apt import apt_install
from appliance.lab.netlab import NetLab, Progress

NGINX_PORT = 8088
HAPROXY_PORT = 8089
PACKAGES = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk"}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def ensure_packages(progress: Progress) -> None:
    missing = [pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None]
    if not missing:
        return
    error = apt_install(missing, "for the data plane benchmark", progress)
    still = [pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None]
    if error is not None or still:
        raise LabError(
            f"could not install {', '.join(still or missing)}: {error}; "
            "install them with apt-get and retry"
        )


def nginx_conf(run_dir: Path, name: str) -> Path:
    prefix = run_dir / f"nginx-{name}"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix};
    proxy_temp_path {prefix};
    fastcgi_temp_path {prefix};
    uwsgi_temp_path {prefix};
    scgi_temp_path {prefix};
    keepalive_requests 1000000;
    server {{
        listen {NGINX_PORT} reuseport;
        location / {{ return 200 "{name}\\n"; }}
    }}
}}
"""
    )
    return conf


def haproxy_conf(run_dir: Path, bind: str, backend: str) -> Path:
    conf = run_dir / "haproxy.cfg"
    conf.write_text(
        f"""global
    maxconn 4000
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend bench
    bind {bind}:{HAPROXY_PORT}
    default_backend backends
backend backends
    balance roundrobin
    server b1 {backend}:{NGINX_PORT}
"""
    )
    return conf


def parse_wrk(text: str) -> tuple[float, float]:
    """(requests per second, p99 latency in ms) from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if rps is None or p99 is None:
        raise LabError(f"could not read wrk's output: {text[-400:]}")
    return float(rps.group(1)), float(p99.group(1)) * _UNITS[p99.group(2)]


def wrk(lab: NetLab, url: str, seconds: float, connections: int) -> tuple[float, float]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    result = lab.exec("client", argv, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise LabError(f"wrk failed: {result.stderr.strip()[-400:]}")
    return parse_wrk(result.stdout)


def _wait_port(lab: NetLab, host: str, address: str, port: int) -> None:
    deadline = time.monotonic() + 15
    url = f"http://{address}:{port}/"
    while time.monotonic() < deadline:
        probe = [
            sys.executable,
            "-c",
            f"import urllib.request; urllib.request.urlopen('{url}', timeout=1)",
        ]
        if lab.exec(host, probe, capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise LabError(f"{url} did not answer from {host} within 15 s; see {lab.dir}/logs")


def bench_dataplane(
    base: Path, seconds: float, rounds: int, connections: int, progress: Progress
) -> dict[str, Any]:
    ensure_packages(progress)
    lab = NetLab.up(nodes=3, backends=1, base=base, progress=lambda _: None)
    try:
        backend = lab.plan.of_kind("backend")[0]
        lab.spawn("nginx", backend.name, ["nginx", "-c", str(nginx_conf(lab.dir, backend.name))])
        leader = lab.wait_leader()
        pool = {"addresses": [topology.L2_VIPS4], "default": True}
        body = {
            "ports": [
                {
                    "port": NGINX_PORT,
                    "backends": [{"address": str(backend.ipv4), "port": NGINX_PORT}],
                }
            ]
        }
        if lab.api(leader, "PUT", "/v1/pools/bench", pool) is None:
            raise LabError("could not create the pool")
        service = lab.api(leader, "PUT", "/v1/services/bench/default/nginx", body)
        if service is None:
            raise LabError("could not create the service")
        vip = str(service["address"])
        owner = None
        deadline = time.monotonic() + 30
        while owner is None and time.monotonic() < deadline:
            found = lab.api(leader, "GET", "/v1/vips") or []
            owner = next((v["node"] for v in found if v["address"] == vip), None)
            time.sleep(0.1)
        if owner is None:
            raise LabError(f"nobody took {vip}")
        node_ip = str(lab.plan.host(owner).ipv4)
        conf = haproxy_conf(lab.dir, node_ip, str(backend.ipv4))
        lab.spawn("haproxy", owner, ["haproxy", "-db", "-f", str(conf)])
        targets = {
            "direct": f"http://{backend.ipv4}:{NGINX_PORT}/",
            "raftlb VIP": f"http://{vip}:{NGINX_PORT}/",
            "HAProxy": f"http://{node_ip}:{HAPROXY_PORT}/",
        }
        for url in targets.values():
            host = url.split("//")[1].split(":")[0]
            _wait_port(lab, "client", host, int(url.rsplit(":", 1)[1].strip("/")))
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
        for r in range(rounds):
            for name, url in targets.items():
                progress(f"round {r + 1}/{rounds}: {name} ({url}), {seconds:g}s")
                runs[name].append(wrk(lab, url, seconds, connections))
    finally:
        lab.down(progress=lambda _: None)
    summary = {
        name: {
            "rps": round(statistics.median(r for r, _ in found), 1),
            "p99_ms": round(statistics.median(p for _, p in found), 3),
        }
        for name, found in runs.items()
    }
    vip_rps = summary["raftlb VIP"]["rps"]
    return {
        "owner": owner,
        "connections": connections,
        "seconds": seconds,
        "rounds": rounds,
        "summary": summary,
        "vip_over_direct": round(vip_rps / summary["direct"]["rps"], 3),
        "vip_over_haproxy": round(vip_rps / summary["HAProxy"]["rps"], 3),
        "runs": runs,
    }


def render_dataplane(result: dict[str, Any]) -> str:
    lines = [
        f"wrk -t2 -c{result['connections']} for {result['seconds']:g}s x {result['rounds']} "
        "rounds against nginx in a backend (medians):",
        f"  {'path':<12} {'req/s':>10} {'p99 ms':>8}",
    ]
    for name, s in result["summary"].items():
        lines.append(f"  {name:<12} {s['rps']:>10.0f} {s['p99_ms']:>8.2f}")
    lines.append(
        f"  VIP / direct {result['vip_over_direct']:.2f}x   "
        f"VIP / HAProxy {result['vip_over_haproxy']:.2f}x (req/s)"
    )
    return "\n".join(lines)


def main_dataplane(
    base: Path, seconds: float, rounds: int, connections: int, as_json: bool, progress: Progress
) -> str:
    result = bench_dataplane(base, seconds, rounds, connections, progress)
    return json.dumps(result, indent=2) if as_json else render_dataplane(result)
