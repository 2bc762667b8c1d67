"""`raftlb lab bench k8s`: how fast Kubernetes Services become working VIPs.

1. In a namespace lab (root): the lab's Kubernetes API server and the sync run in the client
   namespace; for each run a Service is created and the client polls its status and then its
   VIP over HTTP: the time from creating the Service to the first answered request.
2. Cold sync (loopback, one agent with `forward: none`): 1,000 Services with 10 ready endpoints
   each and 10 nodes exist before `raftlb k8s-sync` starts as its own process; the time until
   every Service has its status written, and that process's peak memory (VmHWM).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from appliance.lab import LabError, local, topology
from appliance.lab.k8s_api import FakeApiServer, write_kubeconfig
from appliance.lab.netlab import NetLab, Progress
from appliance.lab.outage import percentile
from appliance.lab.served import ServedApp

CLASS = "raftlb.io/lb"


def k8s_node(name: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": address}],
        },
    }


def k8s_service(name: str, family: str = "IPv4", node_port: int = 80) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": CLASS,
            "ipFamilies": [family],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": node_port}],
        },
    }


def k8s_slice(service: str, nodes: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-1",
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv6",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": [f"2001:db8:77::{i:x}"], "nodeName": n, "conditions": {"ready": True}}
            for i, n in enumerate(nodes, 1)
        ],
    }


def ingress(api: FakeApiServer, name: str) -> str | None:
    obj = api.objects["services"].get(f"bench/{name}") or {}
    found = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return str(found[0]["ip"]) if found else None


def _http_ok(address: str) -> bool:
    try:
        with socket.create_connection((address, 80), timeout=0.2) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


def time_to_first_request(base: Path, runs: int, progress: Progress) -> list[float]:
    from appliance.client import ApiClient
    from k8s_sync.syncer import Syncer
    from k8s_sync.translate import Options

    lab = NetLab.up(nodes=3, backends=2, base=base, progress=lambda _: None)
    inside = lab.in_ns("client")  # runs the sync (it keeps this thread)
    asker = lab.in_ns("client")  # the client's requests
    api = FakeApiServer()
    served = ServedApp(api.app())
    stop = threading.Event()
    running = None
    appliance = None
    try:
        leader = lab.wait_leader()
        pool = {"addresses": [topology.L2_VIPS4], "default": True}
        if lab.api(leader, "PUT", "/v1/pools/lan", pool) is None:
            raise LabError("could not create the pool")
        for host in lab.plan.of_kind("backend"):
            api.put("nodes", k8s_node(host.name, str(host.ipv4)))
        inside.run(served.__enter__)
        appliance = ApiClient(lab.api_url(leader), lab.token())
        syncer = Syncer.for_url(served.url, appliance, Options("bench"))
        running = inside.submit(syncer.run, stop)
        found = []
        for n in range(runs):
            name = f"web{n}"
            started = time.monotonic()
            api.call(api.put, "services", k8s_service(name))
            while True:
                address = ingress(api, name)
                if address and asker.run(_http_ok, address):
                    break
                if time.monotonic() - started > 30:
                    raise LabError(f"{name} did not answer within 30 s; see {lab.dir}/logs")
                time.sleep(0.005)
            found.append(time.monotonic() - started)
            progress(f"[{n + 1}/{runs}] Service created -> first answer {1000 * found[-1]:.0f} ms")
        return found
    finally:
        stop.set()
        if running is not None:
            running.result(timeout=30)
        inside.run(served.__exit__, None, None, None)
        inside.close()
        asker.close()
        if appliance is not None:
            appliance.close()
        lab.down(progress=lambda _: None)


def cold_sync(count: int, endpoints: int, progress: Progress) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="raftlb-bench-k8s-") as tmp:
        directory = Path(tmp)
        lab, _ = local.up(directory / "appliance", nodes=1, progress=lambda _: None)
        api = FakeApiServer()
        try:
            from appliance.client import ApiClient
            from appliance.model import Pool

            with ApiClient(lab.api_url, lab.token()) as appliance:
                appliance.put_pool(Pool(name="big", addresses=["2001:db8:100::/112"], default=True))
            nodes = [f"k{i}" for i in range(endpoints)]
            for i, name in enumerate(nodes, 1):
                api.put("nodes", k8s_node(name, f"2001:db8:5::{i:x}"))
            for n in range(count):
                api.put("services", k8s_service(f"s{n}", "IPv6", 30080))
                api.put("endpointslices", k8s_slice(f"s{n}", nodes))
            progress(f"{count} Services with {endpoints} endpoints each in the API server")
            with ServedApp(api.app()) as served:
                kubeconfig = write_kubeconfig(directory / "kubeconfig", served.url)
                port = local.free_ports(1)[0]
                argv = [sys.executable, "-m", "appliance.cli", "k8s-sync"]
                argv += ["--kubeconfig", str(kubeconfig), "--api", lab.api_url]
                argv += ["--token-file", str(lab.token_file), "--cluster-name", "bench"]
                argv += ["--listen", f"127.0.0.1:{port}", "--resync", "3600"]
                started = time.monotonic()
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    while sum(1 for n in range(count) if ingress(api, f"s{n}")) < count:
                        if proc.poll() is not None:
                            raise LabError(f"k8s-sync exited with {proc.returncode}")
                        if time.monotonic() - started > 600:
                            raise LabError("the cold sync did not finish within 10 minutes")
                        time.sleep(0.2)
                    took = time.monotonic() - started
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                    peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
                finally:
                    proc.terminate()
                    proc.wait(20)
        finally:
            local.down(directory / "appliance", progress=lambda _: None)
    kib = int(peak.split()[1])
    progress(f"cold sync of {count} Services: {took:.1f}s, peak RSS {kib / 1024:.0f} MiB")
    return {
        "services": count,
        "endpoints": endpoints,
        "seconds": round(took, 2),
        "peak_mib": round(kib / 1024, 1),
    }


def bench_k8s(base: Path, runs: int, count: int, progress: Progress) -> dict[str, Any]:
    first = time_to_first_request(base, runs, progress)
    return {
        "service_to_first_answer": {
            "runs": len(first),
            "p50_ms": round(1000 * percentile(first, 50), 1),
            "max_ms": round(1000 * max(first), 1),
        },
        "cold_sync": cold_sync(count, 10, progress),
    }


def render_k8s(result: dict[str, Any]) -> str:
    first = result["service_to_first_answer"]
    cold = result["cold_sync"]
    return "\n".join(
        [
            f"Service created -> first answered request through its VIP ({first['runs']} runs): "
            f"p50 {first['p50_ms']:.0f} ms, max {first['max_ms']:.0f} ms",
            f"cold sync of {cold['services']} Services x {cold['endpoints']} endpoints: "
            f"{cold['seconds']:.1f}s; k8s-sync peak memory {cold['peak_mib']:.0f} MiB",
        ]
    )
