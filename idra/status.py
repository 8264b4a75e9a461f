"""``idra status``: the fleet on one screen, per region (like ``tailscale status``).

Per region: nodes active and draining, users (peers the nodes report, and how many are
active), heartbeat freshness (the newest and oldest, and how many active nodes are
silent), refused re-registrations of an instance, and draining nodes past their drain
deadline (the reaper should have ended them). Exit 0; 1 when the control plane fails.
"""

from __future__ import annotations

import time
from typing import Any

import click
from click.core import ParameterSource

from idra.cliutil import (
    BadInput,
    Column,
    Failed,
    Output,
    ago,
    connection_options,
    cwd_option,
    iso,
    make_api,
    output_options,
    parse_duration,
    plural,
)
from idra.config import ConfigError, load_stack, stack_file
from idra.lifecycle.api import ApiError


def summary(nodes: list[dict[str, Any]], now: float, stale_s: float, max_drain_s: float
            ) -> list[dict[str, Any]]:  # fmt: skip
    """One object per region (sorted), with the fields ``-o json`` prints."""
    regions: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        regions.setdefault(str(node.get("region")), []).append(node)
    rows = []
    for region, here in sorted(regions.items()):
        active = [n for n in here if n.get("state") == "active"]
        heard = sorted(n["last_heartbeat_at"] for n in here if n.get("last_heartbeat_at"))
        late = [
            n["id"] for n in here
            if n.get("state") == "draining" and n.get("drain_started_at") is not None
            and now - n["drain_started_at"] > max_drain_s
        ]  # fmt: skip
        rows.append({
            "region": region,
            "active": len(active),
            "draining": len(here) - len(active),
            "peers": sum(n.get("peers") or 0 for n in here),
            "active_peers": sum(n.get("active_peers") or 0 for n in here),
            "newest_heartbeat_at": heard[-1] if heard else None,
            "oldest_heartbeat_at": heard[0] if heard else None,
            "silent": sum(1 for n in active
                          if now - (n.get("last_heartbeat_at") or 0) > stale_s),
            "identity_refusals": sum(n.get("identity_refusals") or 0 for n in here),
            "past_drain_deadline": late,
        })  # fmt: skip
    return rows


COLUMNS = (
    Column("region", lambda r: r["region"]),
    Column("active", lambda r: r["active"]),
    Column("draining", lambda r: r["draining"]),
    Column("users", lambda r: f"{r['peers']} ({r['active_peers']} active)"),
    Column("newest heartbeat", lambda r: ago(r["newest_heartbeat_at"])),
    Column("oldest heartbeat", lambda r: ago(r["oldest_heartbeat_at"])),
    Column("silent", lambda r: r["silent"]),
    Column("identity refused", lambda r: r["identity_refusals"]),
    Column("past drain deadline", lambda r: ", ".join(r["past_drain_deadline"]) or 0),
)


def _data(row: dict[str, Any]) -> dict[str, Any]:
    return {k: iso(v) if k.endswith("_at") else v for k, v in row.items()}


@click.command()
@connection_options
@click.option("--stack", default=None, envvar="IDRA_STACK",
              help="Drain deadline (maxDrainSeconds) from Pulumi.<stack>.yaml.")  # fmt: skip
@click.option("--max-drain", default=None,
              help="Drain deadline [default: the stack's maxDrainSeconds, else 6h].")  # fmt: skip
@click.option("--silent-after", default="60s", show_default=True,
              help="An active node without a heartbeat this long counts as silent.")  # fmt: skip
@click.option("--watch", "-w", is_flag=True, help="Redraw every --interval seconds.")
@click.option("--interval", type=click.FloatRange(min=1), default=5, show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="With --watch: stop after N screens.")  # fmt: skip
@cwd_option
@output_options
def status(api_url, operator_token_file, ca_file, stack, max_drain, silent_after, watch,
           interval, runs, cwd, out: Output) -> None:  # fmt: skip
    """The fleet per region: nodes active/draining, users, heartbeat freshness, identity
    refusals, nodes past their drain deadline."""
    stale = parse_duration(silent_after, "--silent-after").total_seconds()
    # a context's stack counts only where its file is; a stack given here must be there
    source = click.get_current_context().get_parameter_source("stack")
    if source is ParameterSource.DEFAULT_MAP and not stack_file(stack, cwd.resolve()).is_file():
        stack = None
    if max_drain is None and stack:
        try:
            deadline = float(load_stack(stack, cwd.resolve()).max_drain_seconds)
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
    else:
        deadline = parse_duration(max_drain or "6h").total_seconds()
    api = make_api(api_url, operator_token_file, ca_file)
    shown = 0
    while True:
        try:
            nodes = api.nodes()
        except ApiError as exc:
            raise Failed(str(exc)) from None
        rows = summary(nodes, time.time(), stale, deadline)
        if watch and not out.data and click.get_text_stream("stdout").isatty():
            click.clear()
        title = f"{api_url}: {plural(len(nodes), 'node')} in {plural(len(rows), 'region')}"
        out.print(title, COLUMNS, rows, [_data(r) for r in rows])
        shown += 1
        if not watch or (runs and shown >= runs):
            return
        time.sleep(interval)


__all__ = ["status", "summary"]
