"""`raftlb lab demo`: the guided tour, narrated step by step, in a namespace lab.

It builds a lab, applies a pool and a service through the CLI inside the client namespace, shows
client traffic measured by the prober, crashes the node that matters and shows what happened,
then removes everything (also on Ctrl-C or failure). It grows as the product does: today the
node that matters is the Raft leader; with VIP ownership it becomes the VIP's owner.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from appliance.lab.netlab import LabError, NetLab
from appliance.lab.outage import parse_samples, summary_line

POOL_YAML = """\
pools:
  - name: lan
    addresses: ["192.0.2.200-192.0.2.250", "2001:db8:1::200-2001:db8:1::250"]
    default: true
"""


def _say(text: str) -> None:
    print(f"\n\033[1;36m>>> {text}\033[0m", flush=True)


def _show(lab: NetLab, host: str, argv: list[str]) -> None:
    print(f"\033[2m[{host}]$ {' '.join(argv)}\033[0m", flush=True)
    result = lab.exec(host, argv)
    if result.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` in {host} exited with {result.returncode}")


def _service_yaml(lab: NetLab) -> str:
    backends = "\n".join(
        f"          - {{address: {h.ipv4}, port: 80}}" for h in lab.plan.of_kind("backend")
    )
    return (
        "services:\n  - id: demo/default/web\n    ports:\n      - port: 80\n"
        f"        backends:\n{backends}\n"
    )


def _probe(lab: NetLab, target: str, seconds: float) -> str:
    out = lab.dir / f"probe-{time.monotonic_ns()}.jsonl"
    lab.exec(
        "client",
        [
            sys.executable,
            "-m",
            "appliance.lab.prober",
            "--target",
            target,
            "--port",
            "80",
            "--proto",
            "http",
            "--duration",
            str(seconds),
            "--out",
            str(out),
        ],
        capture_output=True,
    )
    samples = parse_samples(out.read_text().splitlines())
    backends = sorted({s.backend for s in samples if s.backend})
    return f"{summary_line(samples)}; answered by {', '.join(backends) or 'nobody'}"


def run_demo(base: Path) -> None:
    _say(
        "1. Build a whole network in namespaces: a switch, 3 appliance nodes, 2 backends and a "
        "client, IPv4 and IPv6, then start one raftlb agent per node."
    )
    started = time.monotonic()
    lab = NetLab.up(nodes=3, backends=2, base=base)
    try:
        print(
            f"lab {lab.run_id} up in {time.monotonic() - started:.2f}s; namespaces: "
            f"{', '.join(lab.plan.namespaces())}",
            flush=True,
        )
        _say(
            "2. From the client, give the appliance a pool and a service whose backends are "
            "the two backend hosts (the CLI talks to n1's API inside the lab)."
        )
        (lab.dir / "pool.yaml").write_text(POOL_YAML)
        (lab.dir / "service.yaml").write_text(_service_yaml(lab))
        _show(lab, "client", ["raftlb", "pools", "apply", "-f", str(lab.dir / "pool.yaml")])
        _show(lab, "client", ["raftlb", "services", "apply", "-f", str(lab.dir / "service.yaml")])
        _show(lab, "client", ["raftlb", "status"])

        _say(
            "3. Client traffic: the prober sends an HTTP request every 10 ms and records who "
            "answered. (The VIP is allocated; answering it arrives with VIP ownership, so the "
            "client talks to a backend directly for now.)"
        )
        backend = str(lab.plan.of_kind("backend")[0].ipv4)
        print(_probe(lab, backend, 2.0), flush=True)

        leader = lab.wait_leader()
        _say(
            f"4. Crash the node that matters, the Raft leader {leader}: kill -9 of its agent's "
            "whole process group."
        )
        t0 = time.monotonic()
        lab.crash(leader, "kill")
        new = lab.wait_leader(timeout=30, exclude=(leader,))
        print(
            f"new leader {new}, agreed by the survivors {time.monotonic() - t0:.2f}s after "
            "the kill",
            flush=True,
        )
        _show(lab, "client", ["raftlb", "nodes"])

        _say("5. The cluster still takes writes with one node down, and kept every service.")
        (lab.dir / "more.yaml").write_text(
            _service_yaml(lab).replace("demo/default/web", "demo/default/api")
        )
        api = ["raftlb", "--api", lab.api_url(new)]
        _show(lab, "client", [*api, "services", "apply", "-f", str(lab.dir / "more.yaml")])
        _show(lab, "client", [*api, "services", "list"])
        _say(f"6. {leader} comes back and rejoins as a follower.")
        lab.recover(leader, "kill")
        lab.wait_leader(timeout=30)
        time.sleep(1.0)
        _show(lab, "client", [*api, "nodes"])
    finally:
        _say("7. Remove the lab: processes killed by pid, namespaces and run dir deleted.")
        lab.down()
