"""State shared by the CLI commands: how to reach the API, how to print, and how to fail.

Exit codes: 0 ok, 1 the operation failed (the cluster refused it, unreachable, no quorum),
2 bad input (invalid file or arguments, or the agent found the request invalid). Errors go to
stderr, naming the field and the value; with `--json` they are also printed to stdout as
`{"error": {...}}` in the API's own shape, so scripts can parse them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console, RenderableType

from appliance.apierror import ApiError
from appliance.client import ApiClient, ApiUnreachable, ClientConfigError, read_token
from appliance.model import format_field_errors

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# Wide enough for ids and address lists, fixed so piped output and tests do not depend on $COLUMNS.
PIPE_WIDTH = 200  # wide enough that piped tables (grep, scripts) do not wrap


@dataclass
class CliContext:
    api: str
    token_file: Path | None
    as_json: bool
    timeout: float
    ca_file: Path | None = None

    def print_json(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))

    def print(self, renderable: RenderableType) -> None:
        """Print a rich table or text to stdout (plain and 120 columns wide when piped)."""
        console(sys.stdout).print(renderable)

    def client(self) -> ApiClient:
        """A client for `--api` with the token of `--token-file`; exit 2 if that is impossible."""
        if self.token_file is None:
            self.fail(
                EXIT_BAD_INPUT,
                "no API token given",
                hint="pass --token-file FILE or set RAFTLB_TOKEN_FILE (the agent's api.token_file)",
            )
        try:
            token = read_token(self.token_file)
        except ClientConfigError as exc:
            self.fail(
                EXIT_BAD_INPUT,
                str(exc),
                hint="pass --token-file FILE (or RAFTLB_TOKEN_FILE) holding the agent's API token",
            )
        try:
            verify: bool | str = str(self.ca_file) if self.ca_file else True
            return ApiClient(self.api, token, timeout=self.timeout, verify=verify)
        except ClientConfigError as exc:
            self.fail(
                EXIT_BAD_INPUT,
                str(exc),
                hint="check --api / RAFTLB_API (e.g. http://192.0.2.11:8080), --ca-file, --timeout",
            )

    @contextmanager
    def api_client(self, *, all_or_nothing: bool = False) -> Iterator[ApiClient]:
        """A client whose errors become an error message and exit code 1 or 2.

        `all_or_nothing` adds to a refusal (4xx) that nothing was applied; after a 503 the
        change may still be committed, so it says nothing of the kind then.
        """
        client = self.client()
        try:
            with client:
                yield client
        except ApiUnreachable as exc:
            self.fail(EXIT_FAILED, str(exc), code="unreachable", hint="check --api / RAFTLB_API")
        except ApiError as exc:
            hints = [exc.hint] if exc.hint else []
            if all_or_nothing and 400 <= exc.status < 500:
                hints.append("nothing was applied (a file is applied all or nothing)")
            if exc.retry_after is not None:
                hints.append(f"retry after {exc.retry_after:g}s")
            hint = "; ".join(hints) or None
            self.fail(
                EXIT_BAD_INPUT if exc.bad_input else EXIT_FAILED,
                str(exc),
                code=exc.code,
                fields=exc.fields,
                hint=hint,
            )

    def fail(
        self,
        exit_code: int,
        message: str,
        *,
        code: str = "bad_input",
        fields: list[dict[str, Any]] | None = None,
        hint: str | None = None,
        where: str | None = None,
    ) -> NoReturn:
        """Print an error (and its fields, each with its value) and exit with `exit_code`.

        `where` (a file name) prefixes every line, so an editor can jump to it.
        """
        prefix, indent = (f"{where}: ", "") if where else ("", "  ")
        click.echo(f"{prefix}error: {message}", err=True)
        for line in format_field_errors(fields or []):
            click.echo(f"{prefix}{indent}{line}", err=True)
        if hint:
            click.echo(f"{prefix}hint: {hint}", err=True)
        if self.as_json:
            error: dict[str, Any] = {"code": code, "message": message}
            if fields:
                error["fields"] = fields
            if where:
                error["file"] = where
            self.print_json({"error": error})
        sys.exit(exit_code)


def console(stream: Any) -> Console:
    """A rich console for `stream`: colours only on a terminal, fixed width when piped."""
    if stream.isatty():
        return Console(file=stream, highlight=False, emoji=False)
    return Console(
        file=stream,
        color_system=None,
        width=PIPE_WIDTH,
        highlight=False,
        emoji=False,
    )


pass_cli = click.make_pass_decorator(CliContext)
