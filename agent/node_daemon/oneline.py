"""A click group whose every error is one line on stderr: ``Error: <command>: <what>``.

Usage errors (a bad or missing flag) exit 2 without the usage block, so cron mails and
CI logs hold one line; an unexpected exception is one line too, exit 1, and shows its
traceback only with ``IDRA_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from node_daemon.logsetup import json_logging, line


def _fail(message: str, code: int) -> NoReturn:
    text = " ".join(message.split())
    error = line(text, level="error", event="error") if json_logging() else f"Error: {text}"
    click.echo(error, err=True)
    sys.exit(code)


class OneLineGroup(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        prog = kwargs.get("prog_name") or Path(sys.argv[0]).name or self.name
        try:
            super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else prog
            _fail(f"{where}: {exc.format_message()}", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt, EOFError):
            _fail("aborted", 1)
        except Exception as exc:
            if os.environ.get("IDRA_DEBUG"):
                raise
            _fail(f"{prog}: {type(exc).__name__}: {exc or 'no detail'}", 1)
        sys.exit(0)
