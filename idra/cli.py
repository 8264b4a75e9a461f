"""The ``idra`` command line. Exit codes: 0 success, 1 check failed, 2 bad usage or input.

Every flag also reads an environment variable: ``IDRA_<COMMAND>_<FLAG>`` (for example
``IDRA_REAP_MAX_DRAIN``), and the shared ones ``IDRA_API_URL``,
``IDRA_OPERATOR_TOKEN_FILE``, ``IDRA_CA_FILE``, ``IDRA_LOG_FORMAT``, ``IDRA_LOG_LEVEL``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from idra import __version__
from idra.cliutil import LOG_FORMATS, LOG_LEVELS, BadInput, setup_logging
from idra.config import ConfigError, load_stack, stack_file
from idra.controlplane.serve import controlplane
from idra.lab.commands import lab
from idra.lifecycle import commands as lifecycle_commands
from idra.lifecycle.rollout import rollout_command
from idra.lifecycle.scale_in import scale_in_command
from idra.nodes import nodes
from idra.release import release
from idra.render import write_node_files
from node_daemon.oneline import OneLineGroup


@click.group(cls=OneLineGroup, context_settings={"auto_envvar_prefix": "IDRA"})
@click.version_option(__version__, prog_name="idra")
@click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), default="text", envvar="IDRA_LOG_FORMAT",
    show_default=True, show_envvar=True, help="Log lines on stderr: text or one JSON object.",
)  # fmt: skip
@click.option(
    "--log-level", type=click.Choice(LOG_LEVELS), default="info", envvar="IDRA_LOG_LEVEL",
    show_default=True, show_envvar=True,
)  # fmt: skip
def main(log_format: str, log_level: str) -> None:
    """IDRA exit nodes: render node configuration, run the control plane, lab and lifecycle."""
    setup_logging(log_format, log_level)


@main.command()
@click.option("--stack", required=True, help="Stack name: reads Pulumi.<stack>.yaml.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write sysctl.conf, nftables.nft, user-data.yaml, node-daemon.initd.",
)
@click.option("--region", default=None, help="Region to render for (default: the stack's first).")
@click.option(
    "--cwd",
    "--root",
    "cwd",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path(),
    help="Folder holding Pulumi.<stack>.yaml (default: the current folder, as Pulumi).",
)
def render(stack: str, out: Path, region: str | None, cwd: Path) -> None:
    """Render a node's boot configuration for STACK into OUT (all files or none)."""
    try:
        cfg = load_stack(stack, cwd.resolve())
        paths = write_node_files(cfg, out, region)
    except (ConfigError, OSError) as exc:
        raise BadInput(str(exc)) from None
    click.echo(f"stack file: {stack_file(stack, cwd.resolve())}", err=True)
    for path in paths:
        click.echo(path)


main.add_command(controlplane)
main.add_command(lab)
main.add_command(nodes)
main.add_command(lifecycle_commands.canary)
main.add_command(lifecycle_commands.reap)
main.add_command(rollout_command)
main.add_command(release)
main.add_command(scale_in_command)


if __name__ == "__main__":
    sys.exit(main(prog_name="idra"))
