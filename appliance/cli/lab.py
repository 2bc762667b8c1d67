"""`raftlb lab ...`: try raftlb on one machine. `lab local` runs agents on 127.0.0.1 (no root)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from appliance.lab import local

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
    except local.LabError as exc:
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
    except local.LabError as exc:
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
    except local.LabError as exc:
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
    except local.LabError as exc:
        _fail(str(exc))
        return
    click.echo(f"started {node} (pid {pid})")
