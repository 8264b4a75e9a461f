"""What every ``idra`` command shares: errors, the operator API options, tables, logs.

Exit codes: 0 success, 1 a check failed or work was refused, 2 bad usage or input.
Every message is one line on stderr saying what is wrong and where.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import yaml

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


cwd_option = click.option(
    "--cwd", "--root", "cwd", type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path(), help="Folder holding Pulumi.<stack>.yaml (default: the current folder, "
    "as Pulumi).",
)  # fmt: skip


def connection_options(command: Callable) -> Callable:
    """``--api-url``, ``--operator-token-file`` and ``--ca-file`` (also ``IDRA_*``)."""
    for option in reversed(_connection):
        command = option(command)
    return command


OUTPUTS = ("table", "wide", "json", "yaml")


@dataclass(frozen=True)
class Column:
    """A table column: its header, how a cell is read from a row, and whether only
    ``-o wide`` shows it."""

    header: str
    cell: Callable[[dict[str, Any]], Any]
    wide: bool = False


@dataclass(frozen=True)
class Output:
    """How a command prints its result: ``-o table|wide|json|yaml`` and ``--no-headers``."""

    format: str = "table"
    headers: bool = True

    @property
    def data(self) -> bool:
        """JSON or YAML, not a table."""
        return self.format in ("json", "yaml")

    def print_data(self, value: Any) -> None:
        if self.format == "yaml":
            click.echo(yaml.safe_dump(value, sort_keys=False, allow_unicode=True), nl=False)
        else:
            print_json(value)

    def print(self, title: str, columns: Sequence[Column], items: Sequence[dict[str, Any]],
              data: Any = None) -> None:  # fmt: skip
        """``items`` as a table (or ``data``, default ``items``, as JSON/YAML)."""
        if self.data:
            self.print_data(list(items) if data is None else data)
            return
        shown = [c for c in columns if self.format == "wide" or not c.wide]
        rows = [[c.cell(item) for c in shown] for item in items]
        print_table(title, [c.header for c in shown], rows, headers_shown=self.headers)


def _output(fmt: str | None, as_json: bool, no_headers: bool) -> Output:
    if as_json and fmt not in (None, "json"):
        raise BadInput(f"--json and -o {fmt}: give one of them")
    return Output("json" if as_json else (fmt or "table"), headers=not no_headers)


def output_options(command: Callable) -> Callable:
    """``-o/--output table|wide|json|yaml``, ``--json`` (= ``-o json``) and
    ``--no-headers``; the command gets them as one :class:`Output` argument ``out``."""

    @functools.wraps(command)
    def wrapper(*args: Any, output: str | None, as_json: bool, no_headers: bool, **kw: Any):
        return command(*args, out=_output(output, as_json, no_headers), **kw)

    options = [
        click.option("-o", "--output", type=click.Choice(OUTPUTS), default=None,
                     help="table (default), wide (more columns), json or yaml."),
        click.option("--json", "as_json", is_flag=True, help="Same as -o json."),
        click.option("--no-headers", is_flag=True, help="Tables without title and headers."),
    ]  # fmt: skip
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, flag: str = "--max-drain") -> dt.timedelta:
    """``90s``, ``30m``, ``6h``, ``2d`` or plain seconds."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match:
        raise BadInput(f"{flag}: {text!r} is not a duration like 30m, 6h or 2d")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2) or "s"])


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso(epoch: float | None) -> str | None:
    """Unix seconds as UTC ISO-8601 (``2026-05-01T12:00:00Z``); None stays None."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(epoch: float | None, now: float | None = None) -> str:
    """How long ago, for people: ``12 s ago``, ``5 min ago``, ``3 h ago``; ``never``."""
    if epoch is None:
        return "never"
    seconds = max(0, round((time.time() if now is None else now) - float(epoch)))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


_FOLD = 32  # on a terminal, cells longer than this may fold onto more lines


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
                headers_shown: bool = True) -> None:  # fmt: skip
    """A rich table on stdout; an empty cell shows ``-``. On a terminal: titled, long
    cells folded (never cut). Elsewhere (cron, CI): plain columns without a width limit
    under a line with the UTC time and the title, so logs keep whole ids and say when."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    terminal = console.is_terminal
    cells = [["-" if cell in (None, "") else str(cell) for cell in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    if terminal:  # short cells (ids, regions, times) whole; only long text folds
        needed = sum(w if w <= _FOLD else _FOLD for w in widths) + 3 * len(widths) + 2
        console = Console(highlight=False, width=max(console.width, needed))
    table = Table(
        title=title if terminal and headers_shown else None,
        show_header=headers_shown,
        box=box.SIMPLE_HEAD if terminal else None,
        pad_edge=terminal,
        header_style="bold" if terminal else "",
    )
    for header, width in zip(headers, widths, strict=True):
        table.add_column(header, no_wrap=width <= _FOLD or not terminal, overflow="fold")
    for row in cells:
        table.add_row(*map(Text, row))
    if terminal:
        console.print(table)
        return
    plain = Console(file=io.StringIO(), width=1_000_000, color_system=None, highlight=False)
    with plain.capture() as captured:
        plain.print(table)
    if headers_shown:
        click.echo(f"{now_utc()} {title}")
    for line in captured.get().splitlines():
        click.echo(line.rstrip())


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=None, sort_keys=False))


__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "OUTPUTS",
    "BadInput",
    "Column",
    "Failed",
    "Output",
    "ago",
    "connection_options",
    "cwd_option",
    "iso",
    "make_api",
    "output_options",
    "parse_duration",
    "plural",
    "print_json",
    "print_table",
    "read_token",
    "setup_logging",
]
