"""`raftlb lab demo`: the guided tour, narrated step by step, in a namespace lab.

It builds a lab, applies a pool and a service through the CLI inside the client namespace, shows
client traffic measured by the prober, crashes the node that matters and shows what happened,
then removes everything (also on Ctrl-C or failure). The node that matters is the VIP's owner:
the demo cuts it off the network and shows the client's traffic move to the new owner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from appliance.lab import LabError
from appliance.lab.bench import run_prober
from appliance.lab.netlab import NetLab
from appliance.lab.outage import backends_seen, mac_changes, macs_seen, summary_line
from appliance.lab.prober import read_samples

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


def _probe(
    lab: NetLab, target: str, seconds: float, during: Callable[[], None] | None = None
) -> str:
    """Run the prober in the client (calling `during` meanwhile) and describe what it saw."""
    out = run_prober(lab, f"demo-{time.monotonic_ns()}", target, "http", seconds, during)
    samples = read_samples(out)
    backends = ", ".join(f"{b} {n}" for b, n in sorted(backends_seen(samples).items()))
    macs = {h.interfaces[0].mac: h.name for h in lab.plan.of_kind("node")}
    moves = [f"{macs.get(c.old, c.old)} -> {macs.get(c.new, c.new)}" for c in mac_changes(samples)]
    seen = macs_seen(samples)
    via = ", ".join(macs.get(m.mac, m.mac) for m in seen) or "unknown"
    return (
        f"{summary_line(samples)}\nanswered by: {backends or 'nobody'}; the client's neighbour "
        f"entry for {target} pointed at {via}" + (f" (moved {', '.join(moves)})" if moves else "")
    )


def _owner(lab: NetLab, vip: str, ask: list[str]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for node in ask:
            found = lab.api(node, "GET", "/v1/vips") or []
            owner = next((v["node"] for v in found if v["address"] == vip), None)
            if owner:
                return str(owner)
        time.sleep(0.1)
    raise LabError(f"nobody took {vip} within 30s; see {lab.dir}/logs")


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
        vip = str(lab.api(lab.wait_leader(), "GET", "/v1/services/demo/default/web")["address"])
        owner = _owner(lab, vip, lab.node_names())
        _show(lab, "client", ["raftlb", "vips"])

        _say(
            f"3. Client traffic to the VIP {vip}: the prober sends an HTTP request every 10 ms. "
            f"{owner} owns the VIP: it answers ARP for it and forwards to both backends "
            "(nftables DNAT)."
        )
        print(_probe(lab, vip, 2.0), flush=True)

        _say(
            f"4. The node that matters, {owner}, drops off the network (its link is cut), "
            "while the client keeps sending. Its lease lapses, the Raft leader gives the VIP "
            "to another node, which announces it (gratuitous ARP)."
        )

        def cut() -> None:
            time.sleep(1.0)
            lab.crash(owner, "link")

        print(_probe(lab, vip, 4.0, cut), flush=True)
        survivors = [n for n in lab.node_names() if n != owner]
        new = _owner(lab, vip, survivors)
        api = ["raftlb", "--api", lab.api_url(new)]
        _show(lab, "client", [*api, "vips"])

        _say("5. The cluster still takes writes with one node gone, and kept every service.")
        (lab.dir / "more.yaml").write_text(
            _service_yaml(lab).replace("demo/default/web", "demo/default/api")
        )
        _show(lab, "client", [*api, "services", "apply", "-f", str(lab.dir / "more.yaml")])
        _show(lab, "client", [*api, "services", "list"])
        _say(f"6. {owner} comes back and rejoins; the VIP stays where it is (no flap).")
        lab.recover(owner, "link")
        lab.wait_leader(timeout=30)
        time.sleep(1.5)
        _show(lab, "client", [*api, "nodes"])
    finally:
        _say("7. Remove the lab: processes killed by pid, namespaces and run dir deleted.")
        lab.down()
