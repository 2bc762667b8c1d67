"""`raftlb migrate metallb -f FILE...`: MetalLB's configuration as raftlb's. Nothing is sent.

The human output is itself a pools file (`raftlb pools apply -f` reads it: the agent.yaml
snippet and the report are YAML comments), so `raftlb migrate metallb -f metallb.yaml >
pools.yaml` is the whole first step; `--json` gives {pools, agent_bgp, report}. Every file is
read and translated before anything is printed: bad input prints only its errors (exit 2).
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any, NoReturn

import click
import yaml

from appliance.cli.context import EXIT_BAD_INPUT, CliContext, pass_cli
from appliance.cli.files import FileInvalid, read_documents
from appliance.migrate import MigrationError, error_entry
from appliance.migrate.metallb import Migration, translate


def human(result: Migration) -> str:
    """The pools as a pools file, then the agent.yaml snippet and the report as comments."""
    data = result.to_json()
    out = [
        "# raftlb pools translated from MetalLB (raftlb migrate metallb): apply them with",
        "# raftlb pools apply -f THIS_FILE",
        yaml.safe_dump({"pools": data["pools"]}, sort_keys=False).rstrip(),
        "",
        "# For the agent.yaml of every appliance node (next to its other settings):",
    ]
    snippet: dict[str, Any] = {"announce": result.announce}
    if data["agent_bgp"] is not None:
        snippet["bgp"] = data["agent_bgp"]
    out += [f"#   {line}" for line in yaml.safe_dump(snippet, sort_keys=False).splitlines()]
    out += [
        "",
        f"# Report: {len(result.report)} setting(s) without a raftlb equivalent, or changed",
    ]
    for item in data["report"]:
        got = "" if item["value"] is None else f" (got {item['value']!r})"
        line = f"{item['kind']}/{item['name']} {item['field']}: {item['effect']}: {item['message']}"
        wrapped = textwrap.wrap(
            f"{item['file']}: {line}{got}", 96, subsequent_indent="    ", break_on_hyphens=False
        )
        out += [f"# {part}" for part in wrapped]
    return "\n".join(out)


def _fail(cli_ctx: CliContext, errors: list[dict[str, Any]]) -> NoReturn:
    files = {error["file"] for error in errors}
    where = next(iter(files)) if len(files) == 1 else None
    if where is None:  # each line names its file then
        errors = [{**error, "field": f"{error['file']}: {error['field']}"} for error in errors]
    cli_ctx.fail(
        EXIT_BAD_INPUT,
        f"{len(errors)} problem(s) in the MetalLB configuration; nothing was translated",
        code="invalid",
        fields=errors,
        where=where,
    )


@click.group("migrate")
def migrate_group() -> None:
    """Translate another load balancer's configuration into raftlb's."""


@migrate_group.command("metallb")
@click.option(
    "-f",
    "--file",
    "paths",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="MetalLB YAML (CRDs, kind: List, the legacy ConfigMap); repeat for several files.",
)
@click.option("--json", "as_json", is_flag=True, help="Print {pools, agent_bgp, report} as JSON.")
@pass_cli
def metallb(cli_ctx: CliContext, paths: tuple[str, ...], as_json: bool) -> None:
    """Print MetalLB's pools as raftlb pools, the agent's bgp section, and what has no
    equivalent; exit 2 naming the file, object and field of bad input."""
    cli_ctx = dataclasses.replace(cli_ctx, as_json=cli_ctx.as_json or as_json)
    files: list[tuple[str, list[Any]]] = []
    errors: list[dict[str, Any]] = []
    for path in paths:
        try:
            files.append((path, read_documents(path)))
        except FileInvalid as exc:
            errors.append(error_entry(None, path, "(file)", path, exc.message))
    try:
        result = translate(files)
    except MigrationError as exc:
        errors += exc.errors  # every file's problems at once, the unreadable ones' first
    if errors:
        _fail(cli_ctx, errors)
    if cli_ctx.as_json:
        cli_ctx.print_json(result.to_json())
    else:
        click.echo(human(result))
