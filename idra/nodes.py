"""``idra nodes list|show|drain|delete``: the fleet as the control plane sees it.

Exit codes: 0 done, 1 the control plane refused or has no such node, 2 bad usage or input.
"""

from __future__ import annotations

import re
import time
from typing import Any

import click

from idra.cliutil import (
    BadInput,
    Failed,
    connection_options,
    json_option,
    make_api,
    print_json,
    print_table,
)
from idra.lifecycle.api import ApiError, OperatorApi

REASONS = ("manual", "blocked", "compromised", "outdated")
COLUMNS = (
    ("id", "id"),
    ("region", "region"),
    ("state", "state"),
    ("drain reason", "drain_reason"),
    ("peers", "peers"),
    ("active peers", "active_peers"),
    ("heartbeat age", "heartbeat_age_s"),
    ("agent", "agent_version"),
    ("identity refused", "identity_refusals"),  # re-registrations without its credential
)


def _node_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", value):
        raise BadInput(f"ID {value!r}: not a node id (letters, digits, '-', '_')")
    return value


def with_age(node: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The node record plus ``heartbeat_age_s`` (None: never heard from)."""
    last = node.get("last_heartbeat_at")
    age = None if last is None else max(0, round((now or time.time()) - float(last)))
    return node | {"heartbeat_age_s": age}


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _call(api: OperatorApi, method: str, *args: Any) -> Any:
    try:
        return getattr(api, method)(*args)
    except ApiError as exc:
        raise Failed(str(exc)) from None


@click.group()
def nodes() -> None:
    """The fleet as the control plane sees it, and the operator's drain."""


@nodes.command("list")
@connection_options
@click.option("--state", type=click.Choice(["active", "draining"]), help="Only this state.")
@click.option("--region", "regions", multiple=True, help="Only this region (repeatable).")
@json_option
def list_nodes(api_url, operator_token_file, ca_file, state, regions, as_json) -> None:
    """List nodes: id, region, state, drain reason, peers, heartbeat age, agent version,
    refused re-registrations of its instance."""
    api = make_api(api_url, operator_token_file, ca_file)
    now = time.time()
    found = [
        with_age(n, now)
        for n in _call(api, "nodes", state)
        if not regions or n.get("region") in regions
    ]
    if as_json:
        print_json({"nodes": found})
        return
    rows = [
        [_age(n[key]) if key == "heartbeat_age_s" else n.get(key) for _, key in COLUMNS]
        for n in found
    ]
    print_table(f"{len(found)} nodes", [title for title, _ in COLUMNS], rows)


@nodes.command()
@connection_options
@click.argument("node_id", metavar="ID", callback=lambda _c, _p, v: _node_id(v))
@json_option
def show(api_url, operator_token_file, ca_file, node_id, as_json) -> None:
    """Everything the control plane knows about node ID."""
    api = make_api(api_url, operator_token_file, ca_file)
    node = with_age(_call(api, "node", node_id))
    if as_json:
        print_json(node)
        return
    width = max(map(len, node))
    for key, value in node.items():
        shown = _age(value) if key == "heartbeat_age_s" else ("" if value is None else value)
        click.echo(f"{key.ljust(width)}  {shown}")


@nodes.command()
@connection_options
@click.argument("node_id", metavar="ID", callback=lambda _c, _p, v: _node_id(v))
@click.option("--reason", type=click.Choice(REASONS), default="manual", show_default=True)
def drain(api_url, operator_token_file, ca_file, node_id, reason) -> None:
    """Take node ID out of the pool; the reaper terminates it once its users have left."""
    api = make_api(api_url, operator_token_file, ca_file)
    _call(api, "drain", node_id, reason)
    click.echo(f"{node_id} draining ({reason})")


@nodes.command()
@connection_options
@click.argument("node_id", metavar="ID", callback=lambda _c, _p, v: _node_id(v))
@click.option(
    "--force",
    is_flag=True,
    help="First terminate its instance through the fleet (--fleet, --stack), then delete; "
    "also an active node.",
)
@click.option("--fleet", "fleet_kind", type=click.Choice(["aws", "lab"]), default="aws",
              show_default=True, help="With --force: who terminates the instance.")  # fmt: skip
@click.option("--stack", envvar="IDRA_STACK", default=None,
              help="With --force --fleet aws: the instance must be in idra-<stack>-<region> "
              "with the stack's tags.")  # fmt: skip
def delete(api_url, operator_token_file, ca_file, node_id, force, fleet_kind, stack) -> None:
    """Forget node ID once its instance is gone: its clients are unassigned and its
    instance can never register again. The control plane refuses while the node still
    runs (it heartbeated within three intervals), and an active node needs --force;
    --force terminates the instance through the fleet first (never one outside the
    stack's own group)."""
    if force and fleet_kind == "aws" and not stack:
        raise BadInput("--force --fleet aws needs --stack (or IDRA_STACK)")
    api = make_api(api_url, operator_token_file, ca_file)
    node = _call(api, "node", node_id)
    if not force:
        if node.get("state") == "active":
            raise Failed(f"{node_id}: still active; drain it first or give --force")
        try:
            api.delete(node_id, missing_ok=False)
        except ApiError as exc:
            hint = " (or give --force)" if "HTTP 409" in str(exc) else ""
            raise Failed(f"{exc}{hint}") from None
        click.echo(f"{node_id} deleted")
        return
    from idra.lifecycle.commands import fleet_for

    fleet = fleet_for(fleet_kind, stack)
    try:
        problem = fleet.check(node)
        if problem:
            raise Failed(f"{node_id}: instance not terminated: {problem}")
        outcome = fleet.terminate(node)
    except Failed:
        raise
    except Exception as exc:  # an AWS or lab error: one line, nothing deleted
        detail = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        raise Failed(f"{node_id}: instance not terminated: {detail}") from None
    try:
        api.delete(node_id, missing_ok=False, terminated=True)
    except ApiError as exc:
        raise Failed(str(exc)) from None
    click.echo(f"{node_id} instance {outcome}; deleted")


__all__ = ["nodes", "with_age"]
