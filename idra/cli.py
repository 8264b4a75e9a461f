"""The ``idra`` command line. Exit codes: 0 success, 1 check failed, 2 bad usage or input.

Every flag also reads an environment variable: ``IDRA_<COMMAND>_<FLAG>`` (for example
``IDRA_REAP_MAX_DRAIN``), and the shared ones ``IDRA_API_URL``,
``IDRA_OPERATOR_TOKEN_FILE``, ``IDRA_CA_FILE``, ``IDRA_CONTEXT``, ``IDRA_LOG_FORMAT``,
``IDRA_LOG_LEVEL``, ``IDRA_LOG_LIBRARIES``. Flags and variables beat the selected context
(:mod:`idra.contexts`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from idra import __version__, contexts
from idra.cliutil import LOG_FORMATS, LOG_LEVELS, BadInput, cwd_option, setup_logging
from idra.config import ConfigError, load_stack, stack_file
from idra.lab.commands import lab
from idra.lifecycle import commands as lifecycle_commands
from idra.lifecycle.ops_command import ops
from idra.lifecycle.rollout import rollout_command
from idra.lifecycle.scale_in import scale_in_command
from idra.nodes import nodes
from idra.release import release
from idra.render import write_node_files
from idra.status import status
from node_daemon.logsetup import LIBRARIES, line
from node_daemon.oneline import OneLineGroup


class _Main(OneLineGroup):
    """Imports ``idra controlplane`` (uvicorn, FastAPI, SQLAlchemy, Alembic) only when
    it is asked for: every other command starts in well under half the time."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "controlplane"})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "controlplane" and name not in self.commands:
            from idra.controlplane.serve import controlplane

            self.add_command(controlplane)
        return super().get_command(ctx, name)


@click.group(
    cls=_Main,
    context_settings={"auto_envvar_prefix": "IDRA", "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="idra")
@click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), default="text", envvar="IDRA_LOG_FORMAT",
    show_default=True, show_envvar=True, help="Log lines on stderr: text or one JSON object.",
)  # fmt: skip
@click.option(
    "--log-level", type=click.Choice(LOG_LEVELS), default="info", envvar="IDRA_LOG_LEVEL",
    show_default=True, show_envvar=True,
)  # fmt: skip
@click.option(
    "--log-libraries", is_flag=True, envvar="IDRA_LOG_LIBRARIES", show_envvar=True,
    help="Also log the libraries (httpx, httpcore, botocore, urllib3) at --log-level.",
)  # fmt: skip
@click.option(
    "--context", "context_name", default=None, envvar="IDRA_CONTEXT", show_envvar=True,
    help="Named defaults (API URL, token file, CA file, stack) from ~/.config/idra/config.yaml "
    "[default: its current-context].",
)  # fmt: skip
@click.pass_context
def main(ctx: click.Context, log_format: str, log_level: str, log_libraries: bool,
         context_name: str | None) -> None:  # fmt: skip
    """IDRA exit nodes: render node configuration, run the control plane, lab and lifecycle.

    Flags and IDRA_* variables beat the selected context (idra context -h)."""
    setup_logging(log_format, log_level)
    if log_libraries:
        for name in LIBRARIES:
            logging.getLogger(name).setLevel(logging.NOTSET)
    ctx.meta["idra.context"] = context_name
    if ctx.invoked_subcommand in USES_CONTEXT:
        _, settings = contexts.selected(contexts.load(), context_name)
        settings = contexts.with_stack_url(settings, Path.cwd())
        ctx.default_map = contexts.default_map(ctx.command, settings)


# The commands that take their defaults from the context (not the server, lab, context).
USES_CONTEXT = ("nodes", "canary", "reap", "rollout", "status", "render", "ops")


@main.command()
@click.option("--stack", required=True, help="Stack name: reads Pulumi.<stack>.yaml.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write sysctl.conf, nftables.nft, user-data.yaml, node-daemon.initd.",
)
@click.option("--region", default=None, help="Region to render for (default: the stack's first).")
@cwd_option
def render(stack: str, out: Path, region: str | None, cwd: Path) -> None:
    """Render a node's boot configuration for STACK into OUT (all files or none)."""
    try:
        cfg = load_stack(stack, cwd.resolve())
        paths = write_node_files(cfg, out, region)
    except (ConfigError, OSError) as exc:
        raise BadInput(str(exc)) from None
    click.echo(line(f"stack file: {stack_file(stack, cwd.resolve())}", event="render.stack"),
               err=True)  # fmt: skip
    for path in paths:
        click.echo(path)


main.add_command(contexts.context)
main.add_command(lab)
main.add_command(nodes)
main.add_command(ops)
main.add_command(lifecycle_commands.canary)
main.add_command(lifecycle_commands.reap)
main.add_command(rollout_command)
main.add_command(release)
main.add_command(scale_in_command)
main.add_command(status)


if __name__ == "__main__":
    sys.exit(main(prog_name="idra"))
