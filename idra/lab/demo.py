"""``idra lab demo``: the fleet story with real traffic, step by step; exit 0 only if
every step held.

1. every client reaches the internet through its node, v4 and v6, seen as the node;
2. no client reaches the metadata service, the VPC or another client;
3. a client joins and leaves while the others ping on: no loss;
4. one node's address gets listed → the canary drains it (after two runs) → its
   clients move to healthy nodes → the reaper replaces it → the pool is whole again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from idra.config import load_stack
from idra.lab import state as S
from idra.lab import world
from idra.lab.state import Client, LabState
from idra.netns import Netns

PYTHON = sys.executable


@dataclass
class Step:
    name: str
    ok: bool
    detail: str


def _fetch(client: Client, host: str, timeout: float = 3) -> str | None:
    url = f"http://[{host}]:{S.WEB_PORT}/" if ":" in host else f"http://{host}:{S.WEB_PORT}/"
    result = Netns(client.ns).run(
        "curl", "-gsS", "--max-time", str(timeout), url, check=False, timeout=timeout + 5
    )
    return result.stdout.strip() if result.returncode == 0 else None


def internet_through_the_node(state: LabState) -> Step:
    """Every client reaches the internet through its node, v4 and v6."""
    nodes = {n.instance_id: n for n in state.nodes}
    wrong = []
    for client in state.clients:
        node = nodes[client.node_instance_id]
        for target, expected in ((S.PUBLIC_V4, node.public_v4), (S.PUBLIC_V6, node.public_v6)):
            seen = _fetch(client, target)
            if seen != expected:
                wrong.append(f"client{client.index} → {target}: seen as {seen}")
    return Step(
        "clients reach the internet via their node (v4, v6)",
        not wrong,
        "; ".join(wrong) or f"{len(state.clients)} clients, each seen as its node",
    )


def isolation(state: LabState) -> Step:
    """No client reaches the metadata service, the VPC or another client."""
    leaks = []
    for client in state.clients:
        others = [c.address_v4 for c in state.clients if c is not client]
        for target in (S.METADATA_V4, S.PRIVATE_V4, *others):
            if _fetch(client, target, timeout=1.5) is not None:
                leaks.append(f"client{client.index} reached {target}")
    return Step(
        "no client reaches metadata, VPC or another client",
        not leaks,
        "; ".join(leaks) or "169.254.169.254, 10.20.0.5 and peers all dropped",
    )


def join_and_leave(state: LabState) -> Step:
    """A client joins and leaves while another pings on."""
    watcher = state.clients[0]
    ping = subprocess.Popen(
        Netns(watcher.ns).exec_args("ping", "-n", "-q", "-i", "0.05", "-c", "120", S.PUBLIC_V4),
        stdout=subprocess.PIPE,
        text=True,
    )
    with world.api_client(state, "client") as api:
        newcomer = world.add_client(state, api)
        joined = world.handshake(newcomer) or _eventually(lambda: world.handshake(newcomer))
        world.remove_client(state, newcomer, api)
    out, _ = ping.communicate(timeout=30)
    summary = next((line for line in out.splitlines() if "received" in line), "")
    received = int(summary.split(",")[1].split()[0]) if summary else 0
    ok = joined and received == 120
    return Step(
        "a client joins and leaves; the others lose nothing",
        ok,
        f"newcomer connected: {joined}; watcher: {received}/120 pings answered",
    )


def blocked_node_replaced(state: LabState) -> Step:
    """A node's address is listed: canary, drain, clients move, reaper replaces."""
    victim = state.nodes[0]
    (S.LAB_DIR / "listed.json").write_text(json.dumps({victim.public_v4: "listed"}))
    canary = [
        PYTHON,
        "-m",
        "idra.cli",
        "canary",
        "--api-url",
        state.api_url,
        "--operator-token-file",
        str(S.LAB_DIR / "operator-token"),
        "--ca-file",
        str(S.LAB_DIR / "pki/ca.pem"),
        "--nameserver",
        f"{S.SVC_V4}:53",
        "--state-file",
        str(S.LAB_DIR / "canary.json"),
        "--json",
    ]
    runs = [
        json.loads(subprocess.run(canary, capture_output=True, text=True).stdout or "[]")
        for _ in range(2)
    ]
    drained = [r["node_id"] for r in runs[-1] if r["drained"]]
    with world.api_client(state, "client") as api:
        moved = [c for c in state.clients if c.node_instance_id == victim.instance_id]
        for client in moved:
            world.connect(state, client, api)
    with world.api_client(state, "operator") as ops:
        _eventually(lambda: _active_peers(ops, victim.instance_id) == 0, timeout=60)
        reap = subprocess.run(
            [
                PYTHON,
                "-m",
                "idra.cli",
                "reap",
                "--api-url",
                state.api_url,
                "--fleet",
                "lab",
                "--operator-token-file",
                str(S.LAB_DIR / "operator-token"),
                "--ca-file",
                str(S.LAB_DIR / "pki/ca.pem"),
                "--json",
            ],
            capture_output=True,
            text=True,
        )
        state.__dict__.update(LabState.load().__dict__)
        healthy = _eventually(lambda: len(world.active_nodes(ops)) == len(state.nodes), 60)
    (S.LAB_DIR / "listed.json").write_text("{}")
    # a moved client's first handshake may precede its peer on the new node: WireGuard
    # retries after 5 s
    reachable = _eventually(lambda: all(_fetch(c, S.PUBLIC_V4) for c in state.clients), 20)
    replaced = victim.instance_id not in {n.instance_id for n in state.nodes}
    ok = bool(drained) and replaced and healthy and reachable
    return Step(
        "listed node drained, emptied, replaced",
        ok,
        f"drained after 2 canary runs: {bool(drained)}; {len(moved)} clients moved; "
        f"reaper: {reap.returncode == 0 and replaced}; pool healthy: {healthy}; "
        f"clients online: {reachable}",
    )


def _active_peers(ops, instance_id: str) -> int:
    nodes = ops.get("/v1/nodes", params={"state": "draining"}).json()["nodes"]
    return next((n["active_peers"] for n in nodes if n["instance_id"] == instance_id), 0)


def _eventually(condition: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1)
    return False


STORY = [internet_through_the_node, isolation, join_and_leave, blocked_node_replaced]


def run_demo(keep: bool, console: Console) -> int:
    state = LabState.load()
    if state is None or state.status != "up":
        console.print("no lab up: bringing one up (2 nodes, 3 clients)")
        world.teardown(state)
        state = world.bring_up(load_stack("staging"), 2, 3, world.default_agent(), console)
    world.enter_ops()
    steps = []
    for chapter in STORY:
        console.print(f"[bold]{chapter.__doc__ or chapter.__name__}[/bold]")
        step = chapter(state)
        console.print(("[green]✓[/green] " if step.ok else "[red]✗[/red] ") + step.detail)
        steps.append(step)
    table = Table("step", "result", "detail", title="IDRA lab demo")
    for step in steps:
        table.add_row(
            step.name, "[green]held[/green]" if step.ok else "[red]FAILED[/red]", step.detail
        )
    Console().print(table)
    if not all(step.ok for step in steps):
        console.print(f"logs of this run kept in {world.keep_logs()}")
    if not keep:
        world.teardown(LabState.load())
    return 0 if all(step.ok for step in steps) else 1
