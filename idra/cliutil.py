"""What every ``idra`` command shares: errors, the operator API options, tables, logs.

Exit codes: 0 success, 1 a check failed or work was refused, 2 bad usage or input.
Every message is one line on stderr saying what is wrong and where.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import httpx

from idra.lifecycle.api import OperatorApi
from node_daemon.api import is_secure_url
from node_daemon.logsetup import LOG_FORMATS, LOG_LEVELS, setup_logging


class BadInput(click.ClickException):
    """Bad usage or input: exit code 2."""

    exit_code = 2


class Failed(click.ClickException):
    """A check failed or the work was refused: exit code 1."""

    exit_code = 1


def read_token(path: Path, flag: str = "--operator-token-file") -> str:
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{flag} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise BadInput(f"{flag} {path}: empty token file")
    return token


def make_api(api_url: str, token_file: Path, ca_file: Path | None) -> OperatorApi:
    """The operator client, after checking the URL, the token file and the CA file."""
    try:
        secure = is_secure_url(api_url)
    except httpx.InvalidURL as exc:
        raise BadInput(f"--api-url {api_url}: {exc}") from None
    if not secure:
        raise BadInput(f"--api-url {api_url}: must be https:// (plain http only on loopback)")
    token = read_token(token_file)
    try:
        return OperatorApi(api_url, token, ca_file)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


_connection = [
    click.option(
        "--api-url", required=True, envvar="IDRA_API_URL", show_envvar=True,
        help="Control-plane base URL (https://, or http:// on loopback).",
    ),
    click.option(
        "--operator-token-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
        envvar="IDRA_OPERATOR_TOKEN_FILE", show_envvar=True, help="Operator token file.",
    ),
    click.option(
        "--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
        envvar="IDRA_CA_FILE", show_envvar=True, help="CA certificate (PEM) of the control plane.",
    ),
]  # fmt: skip


def connection_options(command: Callable) -> Callable:
    """``--api-url``, ``--operator-token-file`` and ``--ca-file`` (also ``IDRA_*``)."""
    for option in reversed(_connection):
        command = option(command)
    return command


def json_option(command: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, not a table.")(command)


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table: rich on a terminal; otherwise plain full-width columns under a timestamped
    title line, so cron and CI logs keep whole ids and tell when the run was."""
    cells = [[("" if cell is None else str(cell)) for cell in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for i, header in enumerate(headers):
            table.add_column(header, no_wrap=i == 0)  # ids are never cut
        for row in cells:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    click.echo(f"{now_utc()} {title}")
    for row in (list(headers), *cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=None, sort_keys=False))


__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "BadInput",
    "Failed",
    "connection_options",
    "json_option",
    "make_api",
    "print_json",
    "print_table",
    "read_token",
    "setup_logging",
]
