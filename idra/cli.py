"""The ``idra`` command line. Exit codes: 0 success, 1 check failed, 2 bad usage or input."""

from __future__ import annotations

from pathlib import Path

import click

from idra import __version__
from idra.config import ConfigError, load_stack
from idra.controlplane.serve import controlplane
from idra.lab.commands import lab
from idra.lifecycle import commands as lifecycle_commands
from idra.lifecycle.rollout import rollout_command
from idra.render import write_node_files


class IdraError(click.ClickException):
    """Bad input: one line on stderr, exit code 2."""

    exit_code = 2


@click.group()
@click.version_option(__version__, prog_name="idra")
def main() -> None:
    """IDRA exit nodes: render node configuration, run the control plane, lab and lifecycle."""


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
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder holding the stack files (default: this repository).",
)
def render(stack: str, out: Path, region: str | None, root: Path | None) -> None:
    """Render a node's boot configuration for STACK into OUT (all files or none)."""
    try:
        cfg = load_stack(stack, root) if root else load_stack(stack)
        paths = write_node_files(cfg, out, region)
    except (ConfigError, OSError) as exc:
        raise IdraError(str(exc)) from None
    for path in paths:
        click.echo(path)


main.add_command(controlplane)
main.add_command(lab)
main.add_command(lifecycle_commands.canary)
main.add_command(lifecycle_commands.reap)
main.add_command(rollout_command)

if __name__ == "__main__":
    main()
