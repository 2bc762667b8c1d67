"""`raftlb lab bench continuity`: do established connections survive what happens to a VIP?

One lab (3 nodes, 5 backends, layer 2) and a service with a TCP and a UDP echo port over every
backend (consistent hashing, the VIP as source: the defaults). The client keeps N TCP connections
and M UDP flows busy (a request every 10 ms each, `appliance/lab/continuity.py`) while, in turn,
the VIP's owner is killed (-9), cut off, frozen and drained, and a backend is removed and added
back. Per event: the share of connections that survived (kept answering, from the same backend,
on the same connection), the longest stall of a survivor next to the VIP's takeover time, and
for backend changes the share of the hash table's slots that moved to another backend (what new
flows see), next to the ideal 1/N.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from appliance.lab import LabError, topology
from appliance.lab.bench_bgp import wait_hops
from appliance.lab.continuity import Flows, peers_before, verdict
from appliance.lab.netlab import NetLab, Progress
from appliance.lab.netns import NsThread
from appliance.lab.settle import settle

T = TypeVar("T")
EVENTS = ("kill", "link", "freeze", "drain", "backend-remove", "backend-add")
BGP_EVENTS = ("node-remove", "node-add", "backend-remove", "backend-add")
BACKENDS = 5
SERVICE = "bench/default/echo"
BEFORE = 1.0  # seconds of traffic before the event
AFTER = 4.0  # and after it


def _body(lab: NetLab, backends: int) -> dict[str, Any]:
    hosts = [str(h.ipv4) for h in lab.plan.of_kind("backend")][:backends]
    tcp = [{"address": a, "port": topology.BACKEND_TCP_PORT} for a in hosts]
    udp = [{"address": a, "port": topology.BACKEND_UDP_PORT} for a in hosts]
    return {
        "ports": [
            {"port": topology.BACKEND_TCP_PORT, "backends": tcp},
            {"port": topology.BACKEND_UDP_PORT, "protocol": "udp", "backends": udp},
        ]
    }


def slots(lab: NetLab, node: str, vip: str, port: int) -> dict[int, str] | None:
    """The node's kernel table for a VIP's TCP port: slot -> backend address (None: the port
    is not hashed there)."""
    listed = lab.exec(node, ["nft", "list", "ruleset"], capture_output=True, text=True)
    ruleset = str(listed.stdout)

    def body(name: str) -> str:
        return ruleset.split(f"{name} {{", 1)[1].split("}", 1)[0]

    chain = re.search(rf"{re.escape(vip)} \. tcp \. {port} : goto (h-[0-9a-f]+)", ruleset)
    if chain is None:
        return None
    table = re.search(r"map @(t-[0-9a-f]+)", body(f"chain {chain[1]}"))
    assert table is not None, ruleset
    number = r"(0x[0-9a-f]+|\d+)"
    ids = {int(s): int(m, 0) for s, m in re.findall(rf"(\d+) : {number}", body(f"map {table[1]}"))}
    hexed = ipaddress.ip_address(vip).packed.hex()
    dnat = body(f"chain fwd-{hexed}-tcp-{port}")
    by_id = {int(i, 0): a for i, a in re.findall(rf"meta mark {number} dnat ip to ([0-9.]+)", dnat)}
    return {slot: by_id.get(i, f"id {i}") for slot, i in ids.items()}


def table_of(lab: NetLab, node: str, vip: str, backends: int) -> dict[int, str]:
    """The node's table for the VIP's TCP port once it spreads over `backends` backends (the
    node applies a change a moment after the API answered)."""
    deadline = time.monotonic() + 15
    while True:
        found = slots(lab, node, vip, topology.BACKEND_TCP_PORT)
        if found is not None and len(set(found.values())) == backends:
            return found
        if time.monotonic() > deadline:
            raise LabError(f"{node}'s table for {vip} does not spread over {backends} backends")
        time.sleep(0.1)


def moved_share(before: dict[int, str] | None, after: dict[int, str] | None) -> float | None:
    if not before or not after:
        return None
    return sum(1 for s, b in before.items() if after.get(s) != b) / len(before)


def _event(lab: NetLab, event: str, leader: str, owner: str) -> Any:
    """Start the event; the undo to run after the window (None: nothing to undo)."""
    if event in ("kill", "link", "freeze"):
        lab.crash(owner, event)
        return lambda: lab.recover(owner, event)
    if event == "drain":
        if lab.api(leader, "POST", f"/v1/nodes/{owner}/drain") is None:
            raise LabError(f"drain of {owner} failed")
        return lambda: lab.api(leader, "POST", f"/v1/nodes/{owner}/undrain")
    count = BACKENDS - 1 if event == "backend-remove" else BACKENDS
    if lab.api(leader, "PUT", f"/v1/services/{SERVICE}", _body(lab, count)) is None:
        raise LabError(f"could not change the backends of {SERVICE}")
    return None


def _open(holder: NsThread, vip: str, connections: int, udp: int) -> Flows:
    try:
        return holder.run(
            Flows, vip, topology.BACKEND_TCP_PORT, topology.BACKEND_UDP_PORT, connections, udp
        )
    except OSError as exc:
        raise LabError(
            f"could not open {connections} connections to {vip}:{topology.BACKEND_TCP_PORT} "
            f"({exc}); see the agents' logs under the lab's directory"
        ) from None


def _ecmp_event(lab: NetLab, vip: str, event: str, leader: str, victim: str) -> Any:
    """Mode bgp: the victim leaves the router's ECMP group (drained) or joins it again."""
    nodes = lab.node_names()
    if event == "node-add":
        lab.api(leader, "POST", f"/v1/nodes/{victim}/undrain")
        wait_hops(lab, vip, nodes)
        return None
    if lab.api(leader, "POST", f"/v1/nodes/{victim}/drain") is None:
        raise LabError(f"drain of {victim} failed")
    wait_hops(lab, vip, [n for n in nodes if n != victim])
    return None


def _drive(
    lab: NetLab, vip: str, connections: int, udp: int, act: Callable[[], T]
) -> tuple[Flows, float, float, T]:
    """Open the flows, run them for BEFORE + AFTER s, and call `act` from here BEFORE s in:
    the flows, the event's time, the end's, and what `act` returned."""
    holder = lab.in_ns("client")
    try:
        flows = _open(holder, vip, connections, udp)
        driving = holder.submit(flows.run, BEFORE + AFTER)
        time.sleep(BEFORE)
        at = time.monotonic()
        acted = act()
        driving.result(timeout=BEFORE + AFTER + 30)
        end = time.monotonic()
        holder.run(flows.close)
    finally:
        holder.close()
    return flows, at, end, acted


def run_event(lab: NetLab, vip: str, event: str, connections: int, udp: int) -> dict[str, Any]:
    if event in ("node-remove", "node-add"):
        return _run_ecmp(lab, vip, event, connections, udp)
    if lab.router:  # every node forwards; any one's kernel table is the table
        leader = owner = lab.wait_leader()
        wait_hops(lab, vip, lab.node_names())
    else:
        settled = settle(lab, [vip])
        leader, owner = settled.leader, settled.owners[vip]
    # Read before the flows start: parsing a listing of thousands of slots holds the GIL
    # the flows' driver needs (a 70 ms stall of every flow that was the bench's own).
    table_before = None
    if event.startswith("backend-"):
        table_before = table_of(lab, owner, vip, BACKENDS - (event == "backend-add"))
    flows, at, end, undo = _drive(
        lab, vip, connections, udp, lambda: _event(lab, event, leader, owner)
    )
    table_after = None
    if table_before is not None:
        table_after = table_of(lab, owner, vip, BACKENDS - (event == "backend-remove"))
    if undo is not None:
        undo()  # the crashed owner comes back (after AFTER s), the drained one is undrained
    tcp = verdict([f for f in flows.flows if f.kind == "tcp"], at, end)
    udp_verdict = verdict([f for f in flows.flows if f.kind == "udp"], at, end)
    out: dict[str, Any] = {"event": event, "owner": owner, "tcp": tcp.as_dict()}
    out["udp"] = udp_verdict.as_dict()
    out["outage_ms"] = round(1000 * tcp.typical_stall_s, 1)
    moved = moved_share(table_before, table_after)
    if moved is not None:
        out["slots_moved_pct"] = round(100 * moved, 2)
        out["ideal_pct"] = round(100 / BACKENDS, 2)  # one of 5 goes, or one joins 4
    return out


def _run_ecmp(lab: NetLab, vip: str, event: str, connections: int, udp: int) -> dict[str, Any]:
    nodes = lab.node_names()
    leader = lab.wait_leader()
    victim = nodes[-1] if nodes[-1] != leader else nodes[0]
    if event == "node-add":  # from a group without the victim
        if lab.api(leader, "POST", f"/v1/nodes/{victim}/drain") is None:
            raise LabError(f"drain of {victim} failed")
        wait_hops(lab, vip, [n for n in nodes if n != victim])
    else:
        wait_hops(lab, vip, nodes)
    flows, at, end, _ = _drive(
        lab, vip, connections, udp, lambda: _ecmp_event(lab, vip, event, leader, victim)
    )
    if event == "node-remove":
        lab.api(leader, "POST", f"/v1/nodes/{victim}/undrain")
        wait_hops(lab, vip, nodes)
    tcp_flows = [f for f in flows.flows if f.kind == "tcp"]
    tcp = verdict(tcp_flows, at, end)
    udp_verdict = verdict([f for f in flows.flows if f.kind == "udp"], at, end)
    on_victim = peers_before(tcp_flows, at).get(str(lab.plan.host(victim).ipv4), 0)
    return {
        "event": event,
        "owner": victim,
        "tcp": tcp.as_dict(),
        "udp": udp_verdict.as_dict(),
        "outage_ms": round(1000 * tcp.typical_stall_s, 1),
        "tcp_on_victim_before": on_victim,
    }


def bench_continuity(
    base: Path,
    connections: int,
    udp: int,
    events: tuple[str, ...],
    progress: Progress,
    mode: str = "l2",
    source: str | None = None,
) -> dict[str, Any]:
    router = "bird" if mode == "bgp" else False
    lab = NetLab.up(nodes=3, backends=BACKENDS, router=router, base=base, progress=progress)
    results = []
    try:
        leader = lab.wait_leader()
        pool: dict[str, Any] = {"addresses": [topology.L2_VIPS4], "default": True}
        if mode == "bgp":
            pool = {"addresses": [topology.BGP_VIPS4], "default": True, "announce": "bgp"}
            if source is not None:
                pool["balancing"] = {"source": source}
        if lab.api(leader, "PUT", "/v1/pools/bench", pool) is None:
            raise LabError("could not create the pool")
        answer = lab.api(leader, "PUT", f"/v1/services/{SERVICE}", _body(lab, BACKENDS))
        if answer is None:
            raise LabError(f"could not create {SERVICE}")
        vip = str(answer["address"])
        for event in events:
            if event == "backend-add":  # from one fewer
                lab.api(leader, "PUT", f"/v1/services/{SERVICE}", _body(lab, BACKENDS - 1))
            progress(f"{event}: {connections} TCP connections, {udp} UDP flows through {vip}")
            result = run_event(lab, vip, event, connections, udp)
            progress(f"  {render_line(result)}")
            results.append(result)
            if event == "backend-remove":
                lab.api(leader, "PUT", f"/v1/services/{SERVICE}", _body(lab, BACKENDS))
    finally:
        lab.down(progress=progress)
    return {
        "mode": mode,
        "source": source or ("vip" if mode == "l2" else "node"),
        "connections": connections,
        "udp_flows": udp,
        "backends": BACKENDS,
        "events": results,
    }


def render_line(r: dict[str, Any]) -> str:
    tcp, udp = r["tcp"], r["udp"]
    line = (
        f"{r['event']:<15} outage {r['outage_ms']:.0f} ms; "
        f"tcp {tcp['survived']}/{tcp['total']} survived, longest stall "
        f"{tcp['longest_stall_ms']:.0f} ms; udp {udp['survived']}/{udp['total']} kept their "
        f"backend (stall {udp['longest_stall_ms']:.0f} ms)"
    )
    if "tcp_on_victim_before" in r:
        line += f"; {r['tcp_on_victim_before']} tcp went through {r['owner']} before"
    if "slots_moved_pct" in r:
        line += f"; slots moved {r['slots_moved_pct']}% (1/N: {r['ideal_pct']}%)"
    return line


def main_continuity(
    base: Path,
    connections: int,
    udp: int,
    events: tuple[str, ...],
    as_json: bool,
    progress: Progress,
    mode: str = "l2",
    source: str | None = None,
) -> str:
    result = bench_continuity(base, connections, udp, events, progress, mode, source)
    if as_json:
        return json.dumps(result, indent=2)
    lines = [
        f"connection continuity ({mode}, source {result['source']}): {connections} TCP "
        f"connections and {udp} UDP flows through one VIP, {BACKENDS} backends, a request "
        "every 10 ms each",
        *(f"  {render_line(r)}" for r in result["events"]),
        "  (survived: answered after the event by the backend it had, on the same connection;",
        "   outage: the median TCP connection's longest gap in answers from the event on)",
    ]
    return "\n".join(lines)
