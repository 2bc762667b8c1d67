"""`raftlb`: the operator's command line (click).

Exit codes: 0 ok, 1 the operation failed (cluster refused it, unreachable, no quorum),
2 bad input (invalid file or arguments). Human tables by default, `--json` for machines.
Global `--api URL` and `--token-file FILE` (or RAFTLB_API / RAFTLB_TOKEN_FILE) reach an agent.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import click

from appliance.cli.context import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, CliContext, pass_cli
from appliance.cli.migrate import migrate_group
from appliance.cli.resources import COMMANDS
from appliance.cli.seed import seed_command
from appliance.config import AgentConfig, ConfigError, check_host, load_config, summary
from appliance.model import format_field_errors
from k8s_sync.cli import k8s_sync

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "cli", "main"]


class _Commands(click.Group):
    """The root group, whose `lab` group is imported only when it is asked for: the agent and
    the other commands never load the lab, and this is the product's one import of it (the
    contract "lab" in pyproject.toml allows exactly this one)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "lab"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "lab":
            if importlib.util.find_spec("appliance.lab") is None:
                return _lab_not_installed
            from appliance.lab.cli import lab_group

            return lab_group
        return super().get_command(ctx, cmd_name)


@click.command(
    "lab",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    help="The lab and benchmarks (not installed here: see `raftlb lab`).",
)
def _lab_not_installed() -> None:
    """Where the lab is left out (the appliance image): say where it runs instead."""
    raise click.ClickException(
        "the lab is not part of this installation (the appliance image leaves it out); run "
        "it on a Linux workstation from a clone of raftlb: bash tools/demo.sh, or "
        "pip install '.[dev,k8s]' then raftlb lab --help"
    )


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--api",
    envvar="RAFTLB_API",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="Agent API URL (env RAFTLB_API).",
)
@click.option(
    "--token-file",
    envvar="RAFTLB_TOKEN_FILE",
    type=click.Path(path_type=Path),
    help="File holding the API bearer token (env RAFTLB_TOKEN_FILE).",
)
@click.option(
    "--ca-file",
    envvar="RAFTLB_CA_FILE",
    type=click.Path(path_type=Path),
    help="CA bundle that signed the agent's TLS certificate (env RAFTLB_CA_FILE).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True, max=3600),
    help="Seconds to wait for the API.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    api: str,
    token_file: Path | None,
    ca_file: Path | None,
    as_json: bool,
    timeout: float,
) -> None:
    """raftlb: a Raft-replicated load-balancer appliance."""
    ctx.obj = CliContext(
        api=api, token_file=token_file, as_json=as_json, timeout=timeout, ca_file=ca_file
    )


@cli.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Agent config file (YAML).",
)
def agent(config_path: Path) -> None:
    """Run the appliance agent of this node (foreground)."""
    from appliance.agent import AgentStartError, run_agent

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for line in format_field_errors(exc.errors):
            click.echo(f"{config_path}: {line}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s {config.node_id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        run_agent(config)
    except AgentStartError as exc:
        click.echo(f"raftlb agent: {exc}", err=True)
        sys.exit(EXIT_FAILED)


@cli.group("config")
def config_group() -> None:
    """Agent configuration files."""


def _exabgp_errors(config: AgentConfig) -> list[dict[str, Any]]:
    """exabgp's own verdict on the sessions this config makes (announce: bgp only)."""
    if not config.announces_bgp or config.bgp is None:
        return []
    from appliance.bgpsession import ExabgpUnavailableError, exabgp_verdict, session_of

    try:
        verdict = exabgp_verdict(session_of(config.bgp, config.raft.address))
    except ExabgpUnavailableError as exc:
        # Not a refusal: a slow or missing exabgp must not keep the agent from starting (this
        # check runs before every start); the agent's own log says if exabgp then fails.
        click.echo(f"warning: {exc}; the BGP sessions were not checked by exabgp", err=True)
        return []
    if verdict is None:
        return []
    message = f"exabgp refuses the sessions this config makes: {verdict}"
    return [{"field": "bgp", "value": None, "message": message}]


@config_group.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@pass_cli
def config_check(cli_ctx: CliContext, path: Path) -> None:
    """Validate an agent config: print every error with its field (exit 2), or a summary."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        errors = exc.errors
    else:
        errors = check_host(config) or _exabgp_errors(config)
    if errors:
        if cli_ctx.as_json:
            cli_ctx.print_json({"valid": False, "errors": errors})
        else:
            for line in format_field_errors(errors):
                click.echo(f"{path}: {line}", err=True)
            click.echo(f"{path}: {len(errors)} error(s)", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if cli_ctx.as_json:
        cli_ctx.print_json({"valid": True, "config": config.model_dump(mode="json")})
    else:
        click.echo(f"{path}: valid")
        for line in summary(config):
            click.echo(f"  {line}")


for command in COMMANDS:
    cli.add_command(command)
cli.add_command(seed_command)
cli.add_command(migrate_group)
cli.add_command(k8s_sync)


def main() -> None:
    cli()
