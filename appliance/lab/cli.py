"""`raftlb lab ...`: try raftlb on one machine. `lab local` runs agents on 127.0.0.1 (no root).

Part of the lab, not of the product's CLI: `appliance.cli.main` imports this group only when
`raftlb lab` is run.
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from appliance.lab import LabError, local
from appliance.lab.torture_report import KINDS

if TYPE_CHECKING:
    from appliance.lab.netlab import NetLab

EXIT_FAILED = 1


@click.group("lab")
def lab_group() -> None:
    """A raftlb cluster on this machine, for trying and measuring it."""


@lab_group.group("local")
def local_group() -> None:
    """Agents on 127.0.0.1 as background processes (no root, announce mode none)."""


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_FAILED)


def _progress(message: str) -> None:
    click.echo(message, err=True)


_DIR = click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for configs, secrets, data and logs.",
)


@local_group.command("up")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 9))
@click.option("--timing", default="fast", show_default=True, type=click.Choice(["fast", "safe"]))
@_DIR
def local_up(nodes: int, timing: str, directory: Path) -> None:
    """Start NODES agents and wait until they elect a leader."""
    try:
        lab, leader = local.up(directory, nodes, timing, progress=_progress)
    except LabError as exc:
        _fail(str(exc))
        return
    click.echo(f"local cluster up: {nodes} node(s), leader {leader}")
    click.echo(f"API URL:    {lab.api_url}")
    click.echo(f"token file: {lab.token_file}")
    click.echo("use it with:")
    click.echo(f"  export RAFTLB_API={lab.api_url} RAFTLB_TOKEN_FILE={lab.token_file}")
    click.echo("  raftlb status")
    click.echo(f"stop it with: raftlb lab local down --dir {directory}")


@local_group.command("down")
@_DIR
def local_down(directory: Path) -> None:
    """Stop every agent of the local cluster in DIR (by pid)."""
    try:
        stopped = local.down(directory, progress=_progress)
    except LabError as exc:
        _fail(str(exc))
        return
    click.echo(f"stopped {len(stopped)} agent(s)" if stopped else "nothing was running")


@local_group.command("kill")
@_DIR
@click.argument("node")
@click.option(
    "--signal",
    "signame",
    default="KILL",
    show_default=True,
    type=click.Choice(["KILL", "TERM", "STOP", "CONT"]),
)
def local_kill(directory: Path, node: str, signame: str) -> None:
    """Signal NODE's whole process group (KILL: a crash; STOP: a freeze)."""
    try:
        lab = local.load(directory)
        if node not in lab.nodes:
            click.echo(f"error: no node {node!r} (have {', '.join(lab.nodes)})", err=True)
            sys.exit(2)
        local.kill_node(lab, node, getattr(signal, f"SIG{signame}"))
    except LabError as exc:
        _fail(str(exc))
    click.echo(f"sent SIG{signame} to {node}")


@local_group.command("start")
@_DIR
@click.argument("node")
def local_start(directory: Path, node: str) -> None:
    """Start NODE again (after a kill)."""
    try:
        lab = local.load(directory)
        if node not in lab.nodes:
            click.echo(f"error: no node {node!r} (have {', '.join(lab.nodes)})", err=True)
            sys.exit(2)
        pid = local.start_node(lab, node)
    except LabError as exc:
        _fail(str(exc))
        return
    click.echo(f"started {node} (pid {pid})")


# -- the namespace lab (root) -----------------------------------------------------------------

_BASE = click.option(
    "--base",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where run dirs live (default $RAFTLB_LAB_DIR or /tmp/raftlb-lab).",
)

_VIPS_ON_LEADER = click.option(
    "--vips-on-leader",
    type=click.Choice(["avoid", "share"]),
    default="avoid",
    show_default=True,
    help="The agents' vips_on_leader: avoid (the leader hands its VIPs to the others) or share.",
)


def _base(base: Path | None) -> Path:
    from appliance.lab.netlab import DEFAULT_BASE

    return base or DEFAULT_BASE


@lab_group.command("up")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 9))
@click.option("--backends", default=2, show_default=True, type=click.IntRange(0, 40))
@click.option(
    "--router",
    type=click.Choice(["bird", "frr"]),
    is_flag=False,
    flag_value="bird",
    default=None,
    help="Add a BGP router, BIRD 2 (--router alone) or FRR; the client sits behind it.",
)
@click.option("--bfd", is_flag=True, help="With --router: BFD (100 ms x 3) on every session.")
@click.option("--timing", default="fast", show_default=True, type=click.Choice(["fast", "safe"]))
@_BASE
def lab_up(
    nodes: int, backends: int, router: str | None, bfd: bool, timing: str, base: Path | None
) -> None:
    """Build a lab in network namespaces and start the agents in it (root)."""
    from appliance.lab.netlab import NetLab

    if bfd and router is None:
        _fail("--bfd needs --router: BFD runs between the nodes and the router")
        return
    try:
        lab = NetLab.up(
            nodes,
            backends,
            router or False,
            base=_base(base),
            progress=_progress,
            timing=timing,
            bfd=bfd,
        )
    except LabError as exc:
        _fail(str(exc))
        return
    _describe(lab)


def _describe(lab: NetLab) -> None:
    plan = lab.plan
    click.echo(f"run id:     {lab.run_id}   (run dir {lab.dir})")
    click.echo(f"switch:     {plan.switch_ns} (bridge {plan.bridge})")
    for host in plan.hosts:
        addrs = ", ".join(f"{i.ipv4.ip} {i.ipv6.ip}" for i in host.interfaces)
        click.echo(f"{host.name:<11} {host.netns:<22} {host.kind:<8} {addrs}")
    click.echo(f"API URL:    {lab.api_url(lab.node_names()[0])} (reachable inside the lab only)")
    click.echo(f"token file: {lab.token_file}")
    click.echo("run commands inside, with RAFTLB_API and RAFTLB_TOKEN_FILE set:")
    click.echo(f"  raftlb lab exec {lab.run_id} client -- raftlb status")
    click.echo(f"  raftlb lab exec {lab.run_id} n1 -- ip -br addr")
    click.echo(f"remove it:  raftlb lab down {lab.run_id}")


@lab_group.command("status")
@click.argument("run", required=False)
@_BASE
def lab_status(run: str | None, base: Path | None) -> None:
    """Show the labs (or one): namespaces, processes, leader."""
    from appliance.lab.netlab import NetLab, list_runs

    runs = [run] if run else list_runs(_base(base))
    if not runs:
        click.echo(f"no lab under {_base(base)}")
        return
    for run_id in runs:
        try:
            lab = NetLab.find(run_id, _base(base))
        except LabError as exc:
            _fail(str(exc))
            return
        click.echo(
            f"lab {lab.run_id}: {lab.nodes} node(s), {lab.backends} backend(s)"
            f"{f', router {lab.router_kind}' if lab.router else ''}; run dir {lab.dir}"
        )
        for key in sorted(lab.pids):
            state = "running" if lab.alive(key) else "stopped"
            click.echo(f"  {key:<12} pid {lab.pid(key)!s:<8} {state}")
        statuses = lab.statuses()
        for node, status in statuses.items():
            if status is None:
                click.echo(f"  {node}: API does not answer")
            else:
                raft = status["raft"]
                click.echo(
                    f"  {node}: {raft['role']}, leader {raft['leader']}, term {raft['term']}"
                )


@lab_group.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
@_BASE
def lab_exec(args: tuple[str, ...], base: Path | None) -> None:
    """Run a command inside a lab host: exec [RUN] HOST -- CMD..."""
    from appliance.lab.netlab import NetLab

    words = list(args)
    # click already removed the first "--": "RUN HOST CMD..." arrives without it.
    if "--" not in words and len(words) >= 3 and re.fullmatch(r"[0-9a-f]{6}", words[0]):
        words = [words[0], words[1], "--", *words[2:]]
    if "--" in words:
        cut = words.index("--")
        head, command = words[:cut], words[cut + 1 :]
    else:
        head, command = words[:1], words[1:]
    if not command or len(head) not in (1, 2):
        click.echo("usage: raftlb lab exec [RUN] HOST -- CMD...", err=True)
        sys.exit(2)
    run_id, host = (None, head[0]) if len(head) == 1 else (head[0], head[1])
    try:
        lab = NetLab.find(run_id, _base(base))
        if host not in lab.plan.names():
            click.echo(f"error: no host {host!r} (have {', '.join(lab.plan.names())})", err=True)
            sys.exit(2)
        result = lab.exec(host, command)
    except LabError as exc:
        _fail(str(exc))
        return
    sys.exit(result.returncode)


@lab_group.command("down")
@click.argument("run", required=False)
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Remove every lab, and leftovers of crashed runs (namespaces, processes, dirs).",
)
@_BASE
def lab_down(run: str | None, everything: bool, base: Path | None) -> None:
    """Remove a lab: kill its processes by pid, delete its namespaces and run dir."""
    from appliance.lab.netlab import NetLab, down_all, require_root

    try:
        require_root()
        if everything:
            count = down_all(_base(base), progress=_progress)
            click.echo(f"removed {count} lab(s) and every leftover")
            return
        NetLab.find(run, _base(base)).down(progress=_progress)
    except LabError as exc:
        _fail(str(exc))


@lab_group.command("demo")
@_BASE
def lab_demo(base: Path | None) -> None:
    """The guided demo: a lab, a service, client traffic, a crash, what happened (root)."""
    from appliance.lab.demo import run_demo

    try:
        run_demo(_base(base))
    except LabError as exc:
        _fail(str(exc))


@lab_group.group("bench")
def bench_group() -> None:
    """Benchmarks in a namespace lab (root); each prints its figures, or JSON with --json."""


@bench_group.command("lab")
@click.option("--seconds", default=5.0, show_default=True, type=click.FloatRange(1, 120))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@_BASE
def bench_lab(seconds: float, as_json: bool, base: Path | None) -> None:
    """Lab up/down time and the prober's resolution (send gaps, short cuts it can see)."""
    from appliance.lab.bench import main_lab

    try:
        click.echo(main_lab(_base(base), seconds, as_json, _progress))
    except LabError as exc:
        _fail(str(exc))


@bench_group.command("failover")
@click.option("--runs", default=5, show_default=True, type=click.IntRange(1, 100))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option(
    "--compare",
    type=click.Choice(["keepalived"]),
    help="Also run keepalived (VRRP, default and 100 ms timers) in the same lab (mode l2).",
)
@click.option(
    "--mode",
    type=click.Choice(["l2", "bgp"]),
    default="l2",
    show_default=True,
    help="l2: one owner per VIP; bgp: every node announces, behind a router (BIRD, FRR).",
)
@click.option(
    "--router",
    "routers",
    type=click.Choice(["bird", "frr"]),
    multiple=True,
    help="Mode bgp: the router(s) to run behind, one lab each (default: both).",
)
@click.option(
    "--case",
    "cases",
    type=click.Choice(["drain", "kill", "link", "freeze"]),
    multiple=True,
    help="Only these cases (default: all), e.g. --case drain --runs 20.",
)
@click.option("--bfd", is_flag=True, help="Mode bgp: BFD (100 ms x 3) between nodes and router.")
@_VIPS_ON_LEADER
@_BASE
def bench_failover(
    runs: int,
    as_json: bool,
    compare: str | None,
    mode: str,
    routers: tuple[str, ...],
    cases: tuple[str, ...],
    bfd: bool,
    vips_on_leader: str,
    base: Path | None,
) -> None:
    """Client-seen outage when a VIP's owner is killed, cut off or frozen, and on a drain."""
    from appliance.lab.bench_failover import main_failover

    try:
        if mode == "bgp":
            import json

            from appliance.lab.bench_bgp import CASES, bench_bgp, render_bgp
            from appliance.lab.routers import ROUTERS

            result = bench_bgp(
                _base(base), runs, _progress, routers or ROUTERS, cases or CASES, bfd
            )
            click.echo(json.dumps(result, indent=2) if as_json else render_bgp(result))
            return
        text = main_failover(
            _base(base),
            runs,
            as_json,
            _progress,
            compare == "keepalived",
            vips_on_leader,
            cases or ("kill", "link", "freeze", "drain"),
        )
        click.echo(text)
    except LabError as exc:
        _fail(str(exc))


@lab_group.command("torture")
@click.option("--rounds", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--faults",
    default=",".join(KINDS),
    show_default=True,
    help="Comma-separated fault kinds to draw from.",
)
@click.option("--seed", default=1, show_default=True, type=int, help="Same seed, same faults.")
@click.option("--ipv6", is_flag=True, help="IPv6 VIPs too (three of each family).")
@click.option(
    "--duration",
    default="0.5-2",
    show_default=True,
    help="How long each fault lasts, seconds: a range MIN-MAX or one value (60: a minute).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@_VIPS_ON_LEADER
@_BASE
def lab_torture(
    rounds: int,
    faults: str,
    seed: int,
    ipv6: bool,
    duration: str,
    as_json: bool,
    vips_on_leader: str,
    base: Path | None,
) -> None:
    """Random faults on a namespace lab, watched from the client: outages, dual owners (exit
    1 if any), lease lapses on untouched nodes, elections (root)."""
    import json

    from appliance.lab.torture import torture
    from appliance.lab.torture_report import render

    kinds = [k.strip() for k in faults.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise click.BadParameter(
            f"{', '.join(unknown) or 'none given'}: the kinds are {', '.join(KINDS)}",
            param_hint="--faults",
        )
    low, _, high = duration.partition("-")
    try:
        span = (float(low), float(high or low))
    except ValueError:
        raise click.BadParameter(
            f"{duration!r} is not MIN-MAX seconds", param_hint="--duration"
        ) from None
    if not 0.1 <= span[0] <= span[1] <= 600:
        raise click.BadParameter(f"{duration!r}: 0.1 <= MIN <= MAX <= 600", param_hint="--duration")
    try:
        result = torture(_base(base), rounds, kinds, seed, ipv6, _progress, span, vips_on_leader)
    except LabError as exc:
        _fail(str(exc))
        return
    click.echo(json.dumps(result, indent=2) if as_json else render(result))
    if result["total"]["dual_owner_moments"]:
        raise SystemExit(1)


@bench_group.command("dataplane")
@click.option("--seconds", default=5.0, show_default=True, type=click.FloatRange(1, 120))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--connections", default=50, show_default=True, type=click.IntRange(1, 2000))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@_BASE
def bench_dataplane(
    seconds: float, rounds: int, connections: int, as_json: bool, base: Path | None
) -> None:
    """Requests/s and p99 through a VIP, against direct and against HAProxy (nginx, wrk)."""
    from appliance.lab.bench_dataplane import main_dataplane

    try:
        click.echo(main_dataplane(_base(base), seconds, rounds, connections, as_json, _progress))
    except LabError as exc:
        _fail(str(exc))


CONTINUITY_EVENTS = ["kill", "link", "freeze", "drain", "node-remove", "node-add"]
CONTINUITY_EVENTS += ["backend-remove", "backend-add"]


@bench_group.command("continuity")
@click.option("--connections", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--udp", default=20, show_default=True, type=click.IntRange(0, 1000))
@click.option(
    "--event",
    "events",
    type=click.Choice(CONTINUITY_EVENTS),
    multiple=True,
    help="Only these events (default: all of the mode, in this order).",
)
@click.option(
    "--mode",
    type=click.Choice(["l2", "bgp"]),
    default="l2",
    show_default=True,
    help="bgp: behind a router (BIRD) whose ECMP group loses and regains a node.",
)
@click.option(
    "--source",
    type=click.Choice(["vip", "node"]),
    help="The pool's balancing.source (default: vip for l2, node for bgp).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@_BASE
def bench_continuity(
    connections: int,
    udp: int,
    events: tuple[str, ...],
    mode: str,
    source: str | None,
    as_json: bool,
    base: Path | None,
) -> None:
    """Established TCP connections and UDP flows through a VIP while its owner is killed, cut
    off, frozen, drained (bgp: a node leaves and joins the router's ECMP group), and a backend
    removed and added: how many survive, the longest stall, and the share of flows a backend
    change moves."""
    from appliance.lab.bench_continuity import BGP_EVENTS, EVENTS, main_continuity

    default = BGP_EVENTS if mode == "bgp" else EVENTS
    try:
        text = main_continuity(
            _base(base), connections, udp, events or default, as_json, _progress, mode, source
        )
        click.echo(text)
    except LabError as exc:
        _fail(str(exc))


@bench_group.command("scale")
@click.option("--services", default=5000, show_default=True, type=click.IntRange(10, 20000))
@click.option("--backends", default=10, show_default=True, type=click.IntRange(1, 100))
@click.option("--batch", default=100, show_default=True, type=click.IntRange(1, 250))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--keep-logs", is_flag=True, help="Keep the agents' logs (the path is printed).")
@_BASE
def bench_scale(
    services: int, backends: int, batch: int, as_json: bool, keep_logs: bool, base: Path | None
) -> None:
    """Thousands of services: apply and write latency, ruleset deltas, elections, VIP moves,
    a probed VIP's outage, a lagging node's snapshot install, a full-cluster restart."""
    from appliance.lab.bench_scale import main_scale

    try:
        out = main_scale(_base(base), services, backends, batch, as_json, _progress, keep_logs)
        click.echo(out)
    except LabError as exc:
        _fail(str(exc))


@bench_group.command("k8s")
@click.option("--runs", default=5, show_default=True, type=click.IntRange(1, 100))
@click.option("--services", default=1000, show_default=True, type=click.IntRange(1, 20000))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@_BASE
def bench_k8s(runs: int, services: int, as_json: bool, base: Path | None) -> None:
    """Service created -> first answer through its VIP; cold sync of many Services."""
    import json

    from appliance.lab.bench_k8s import bench_k8s as run_bench
    from appliance.lab.bench_k8s import render_k8s

    try:
        result = run_bench(_base(base), runs, services, _progress)
    except LabError as exc:
        _fail(str(exc))
        return
    click.echo(json.dumps(result, indent=2) if as_json else render_k8s(result))


@bench_group.command("raft")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--commits", default=300, show_default=True, type=click.IntRange(10, 10000))
@click.option(
    "--dir",
    "directory",
    default=Path("/var/tmp"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the nodes' data go: a real disk (a tmpfs makes syncs free).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench_raft(rounds: int, commits: int, directory: Path, as_json: bool) -> None:
    """Commit latency with Raft's storage synced to disk (the default) and without."""
    import json

    from appliance.lab.bench_raft import bench_raft as run_bench
    from appliance.lab.bench_raft import render_raft

    result = run_bench(directory, rounds, commits, _progress)
    click.echo(json.dumps(result, indent=2) if as_json else render_raft(result))
