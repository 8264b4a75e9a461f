"""``idra lab up|status|demo|down``: the whole fleet story on one machine (needs root)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from idra.config import ConfigError, load_stack
from idra.lab import state as S
from idra.lab.state import LabState

console = Console(stderr=True)


class LabError(click.ClickException):
    exit_code = 1


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.UsageError("the lab needs root (network namespaces): run it with sudo")


@click.group()
def lab() -> None:
    """Local lab: exit nodes, clients, control plane and lifecycle in network namespaces."""


@lab.command()
@click.option("--nodes", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option("--clients", type=click.IntRange(0, 20), default=3, show_default=True)
@click.option("--stack", default="staging", show_default=True, help="Stack config to render.")
@click.option("--agent", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="node-daemon.pyz to run (default: build dist/node-daemon.pyz).")  # fmt: skip
@click.option("--replicas", type=click.IntRange(1, 4), default=1, show_default=True,
              help="Control planes: 1 on SQLite; more on PostgreSQL behind HAProxy.")  # fmt: skip
def up(nodes: int, clients: int, stack: str, agent: Path | None, replicas: int) -> None:
    """Build the lab: internet, control plane, NODES exit nodes and CLIENTS clients."""
    _need_root()
    from idra.lab import world
    from idra.netns import netns_names

    existing = LabState.load()
    if existing and existing.status == "up":
        raise LabError(f"a lab is already up ({S.LAB_DIR}); run 'idra lab down' first")
    if existing or any(n.startswith(S.NS_PREFIX) for n in netns_names()):
        console.print("cleaning a half-made lab first")
        world.teardown(existing)
    try:
        cfg = load_stack(stack)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        world.bring_up(cfg, nodes, clients, agent or world.default_agent(), console, replicas)
    except Exception:
        console.print("[red]lab up failed; removing what was made[/red]")
        world.teardown(LabState.load())
        raise
    status.callback()


@lab.command()
def status() -> None:
    """Show the running lab's nodes and clients."""
    _need_root()
    current = LabState.load()
    if current is None:
        raise LabError("no lab is up (idra lab up)")
    table = Table("node", "namespace", "public address", "instance", "node id",
                  title="exit nodes")  # fmt: skip
    for node in current.nodes:
        table.add_row(str(node.index), node.ns, f"{node.public_v4} {node.public_v6}",
                      node.instance_id, node.node_id)  # fmt: skip
    Console().print(table)
    table = Table("client", "namespace", "node", title="clients")
    for client in current.clients:
        table.add_row(str(client.index), client.ns, client.node_id)
    Console().print(table)
    replicas = current.replicas
    behind = f" ({replicas} replicas on PostgreSQL behind HAProxy)" if replicas > 1 else ""
    Console().print(
        f"control plane {current.api_url}{behind} · state {S.LAB_DIR} · status {current.status}"
    )


@lab.command()
def down() -> None:
    """Remove every namespace, interface, process and file the lab made."""
    _need_root()
    from idra.lab import world

    removed = world.teardown(LabState.load())
    console.print(f"removed {len(removed)} lab resources" if removed else "no lab to remove")


@lab.command()
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards.")
def demo(keep: bool) -> None:
    """Tell the whole story with real traffic; exit 0 only if every step held."""
    _need_root()
    from idra.lab.demo import run_demo

    sys.exit(run_demo(keep=keep, console=console))
