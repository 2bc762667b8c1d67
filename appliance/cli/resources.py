"""The operator's commands on the cluster's state: status, nodes, pools, services, vips.

Each command makes its API calls through `CliContext.api_client`, which turns failures into an
error message and exit code, then prints a table (see `render`) or, with `--json`, the API's
objects as JSON. Apply commands check the whole file locally first and send it in one request,
which the cluster commits all or nothing.
"""

from __future__ import annotations

from typing import Any, TypeVar

import click
from pydantic import BaseModel

from appliance.cli import render
from appliance.cli.context import EXIT_BAD_INPUT, CliContext, pass_cli
from appliance.cli.files import POOLS, SERVICES, FileInvalid, Kind, parse_document, read_document

M = TypeVar("M", bound=BaseModel)

_FILE = click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="YAML or JSON file (- for stdin): a list, one object, or a mapping of the kind.",
)
_DRY_RUN = click.option(
    "--dry-run", is_flag=True, help="Only check the file locally; send nothing."
)


def _dump(items: list[Any]) -> list[Any]:
    return [item.model_dump(mode="json") for item in items]


def _load(cli_ctx: CliContext, path: str, kind: Kind[M]) -> list[M]:
    """The validated objects of an apply file; exit 2 naming every bad field if it is invalid."""
    try:
        return parse_document(read_document(path), kind)
    except FileInvalid as exc:
        cli_ctx.fail(EXIT_BAD_INPUT, exc.message, code="invalid", fields=exc.errors, where=path)


@click.command()
@pass_cli
def status(cli_ctx: CliContext) -> None:
    """This node's view of the cluster: Raft role, leader, term, quorum, members, counts."""
    with cli_ctx.api_client() as client:
        data = client.status()
    if cli_ctx.as_json:
        cli_ctx.print_json(data.model_dump(mode="json"))
    else:
        cli_ctx.print(render.status_view(data))


@click.group(invoke_without_command=True)
@click.pass_context
def nodes(click_ctx: click.Context) -> None:
    """Every appliance node: role, Raft connection, lease, VIPs, version (or drain/undrain)."""
    if click_ctx.invoked_subcommand is not None:
        return
    cli_ctx = click_ctx.find_object(CliContext)
    assert cli_ctx is not None
    with cli_ctx.api_client() as client:
        members = client.nodes()
    if cli_ctx.as_json:
        cli_ctx.print_json(_dump(members))
    else:
        cli_ctx.print(render.nodes_table(members))


def _drain(cli_ctx: CliContext, node: str, drained: bool) -> None:
    with cli_ctx.api_client() as client:
        result = client.set_drain(node, drained)
    if cli_ctx.as_json:
        cli_ctx.print_json(result)
    else:
        click.echo(
            f"{node} drained: its VIPs move away (release, released, take)"
            if drained
            else f"{node} undrained: it may own VIPs again"
        )


@nodes.command("drain")
@click.argument("node")
@pass_cli
def nodes_drain(cli_ctx: CliContext, node: str) -> None:
    """Move NODE's VIPs to other nodes, break-before-make, and give it none until undrained."""
    _drain(cli_ctx, node, True)


@nodes.command("undrain")
@click.argument("node")
@pass_cli
def nodes_undrain(cli_ctx: CliContext, node: str) -> None:
    """Let NODE own VIPs again (the scheduler moves only what balance needs)."""
    _drain(cli_ctx, node, False)


@click.command()
@pass_cli
def vips(cli_ctx: CliContext) -> None:
    """Every allocated address: pool, announce mode, owners, ports, owning node."""
    with cli_ctx.api_client() as client:
        data = client.vips()
    if cli_ctx.as_json:
        cli_ctx.print_json(_dump(data))
    else:
        cli_ctx.print(render.vips_table(data))


# -- pools ------------------------------------------------------------------------------------


@click.group()
def pools() -> None:
    """Address pools that VIPs are allocated from."""


@pools.command("list")
@pass_cli
def pools_list(cli_ctx: CliContext) -> None:
    """List pools with their addresses and how many are in use."""
    with cli_ctx.api_client() as client:
        items = client.pools()
        allocations = client.allocations()
    if cli_ctx.as_json:
        cli_ctx.print_json(_dump(items))
    else:
        cli_ctx.print(render.pools_table(items, allocations))


@pools.command("apply")
@_FILE
@_DRY_RUN
@pass_cli
def pools_apply(cli_ctx: CliContext, path: str, dry_run: bool) -> None:
    """Create or replace the pools of a file, all or nothing."""
    items = _load(cli_ctx, path, POOLS)
    if dry_run:
        _report_valid(cli_ctx, path, items, POOLS)
        return
    with cli_ctx.api_client(all_or_nothing=True) as client:
        result = client.apply(pools=items)
    applied_pools = result.pools()
    if cli_ctx.as_json:
        cli_ctx.print_json({"pools": _dump(applied_pools)})
    else:
        click.echo(f"applied {len(applied_pools)} pool(s) from {path}")
        cli_ctx.print(render.pools_table(applied_pools))


# -- services ---------------------------------------------------------------------------------


@click.group()
def services() -> None:
    """Load-balanced services and their VIPs."""


@services.command("list")
@pass_cli
def services_list(cli_ctx: CliContext) -> None:
    """List services with their address, ports and pool."""
    with cli_ctx.api_client() as client:
        items = client.services()
        allocations = client.allocations()
    if cli_ctx.as_json:
        cli_ctx.print_json(_dump(items))
    else:
        cli_ctx.print(render.services_table(items, allocations))


@services.command("get")
@click.argument("service_id", metavar="ID")
@pass_cli
def services_get(cli_ctx: CliContext, service_id: str) -> None:
    """Show one service (ID like cluster/namespace/name): spec, address, ports, backends and
    their health as the answering node sees it."""
    with cli_ctx.api_client() as client:
        service, health = client.service_with_health(service_id)
        allocation = next((a for a in client.allocations() if a.owner == service_id), None)
    if cli_ctx.as_json:
        cli_ctx.print_json(
            {
                **service.model_dump(mode="json"),
                "health": health.model_dump(mode="json") if health else None,
            }
        )
    else:
        cli_ctx.print(render.service_view(service, allocation, health))


@services.command("apply")
@_FILE
@_DRY_RUN
@pass_cli
def services_apply(cli_ctx: CliContext, path: str, dry_run: bool) -> None:
    """Create or replace the services of a file, all or nothing; print their addresses."""
    items = _load(cli_ctx, path, SERVICES)
    if dry_run:
        _report_valid(cli_ctx, path, items, SERVICES)
        return
    with cli_ctx.api_client(all_or_nothing=True) as client:
        result = client.apply(services=items)
    with cli_ctx.api_client() as client:
        allocations = client.allocations()
    applied_services = result.services()
    if cli_ctx.as_json:
        cli_ctx.print_json({"services": _dump(applied_services)})
    else:
        click.echo(f"applied {len(applied_services)} service(s) from {path}")
        cli_ctx.print(render.services_table(applied_services, allocations))


@services.command("delete")
@click.argument("service_id", metavar="ID")
@pass_cli
def services_delete(cli_ctx: CliContext, service_id: str) -> None:
    """Delete a service and release its address."""
    with cli_ctx.api_client() as client:
        client.delete_service(service_id)
    if cli_ctx.as_json:
        cli_ctx.print_json({"deleted": service_id})
    else:
        click.echo(f"deleted service {service_id}")


def _report_valid(cli_ctx: CliContext, path: str, items: list[M], kind: Kind[M]) -> None:
    if cli_ctx.as_json:
        cli_ctx.print_json({"valid": True, kind.key: _dump(items)})
    else:
        names = ", ".join(kind.ident(item) for item in items)
        click.echo(f"{path}: valid, {len(items)} {kind.key} ({names}); nothing sent (--dry-run)")


COMMANDS = [status, nodes, vips, pools, services]
