"""``idra nodes list|show|drain|delete``: the fleet as the control plane sees it.

JSON and YAML hold node objects with exactly the keys of ``GET /v1/nodes`` (times as UTC
ISO-8601); tables show times relative to now. Exit codes: 0 done, 1 the control plane
refused or has no such node (or the operator said no), 2 bad usage or input.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import click

from idra.cliutil import (
    BadInput,
    Column,
    Failed,
    Output,
    ago,
    connection_options,
    iso,
    make_api,
    output_options,
    parse_duration,
    plural,
)
from idra.lifecycle.api import ApiError, OperatorApi
from node_daemon.logsetup import line

REASONS = ("manual", "blocked", "compromised", "outdated")
COLUMNS = (
    Column("id", lambda n: n["id"]),
    Column("region", lambda n: n.get("region")),
    Column("state", lambda n: n.get("state")),
    Column("reason", lambda n: n.get("drain_reason")),
    Column("peers", lambda n: n.get("peers")),
    Column("active", lambda n: n.get("active_peers")),
    Column("heartbeat", lambda n: ago(n.get("last_heartbeat_at"))),
    Column("agent", lambda n: n.get("agent_version")),
    Column("instance", lambda n: n.get("instance_id"), wide=True),
    Column("public ip", lambda n: n.get("public_ip"), wide=True),
    Column("draining since", lambda n: _ago_or_blank(n.get("drain_started_at")), wide=True),
    Column("registered", lambda n: ago(n.get("registered_at")), wide=True),
    # re-registrations of its instance without its credential
    Column("identity refused", lambda n: n.get("identity_refusals"), wide=True),
)


def _ago_or_blank(epoch: float | None) -> str:
    return "" if epoch is None else ago(epoch)


def _node_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", value):
        raise BadInput(f"ID {value!r}: not a node id (letters, digits, '-', '_')")
    return value


def _node_ids(_ctx: Any, _param: Any, values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_node_id(v) for v in values))  # each once, in order


def as_data(node: dict[str, Any]) -> dict[str, Any]:
    """A node for JSON/YAML: the keys of ``GET /v1/nodes``, times as UTC ISO-8601."""
    return {k: iso(v) if k.endswith("_at") else v for k, v in node.items()}


def _call(api: OperatorApi, method: str, *args: Any) -> Any:
    try:
        return getattr(api, method)(*args)
    except ApiError as exc:
        raise Failed(str(exc)) from None


def _confirm(verb: str, targets: list[dict[str, Any]], yes: bool) -> None:
    """Show what will happen (stderr); then ask on a terminal, or need ``--yes``."""
    for node in targets:
        text = (f"will {verb} {node['id']} ({node.get('region')}, {node.get('state')}, "
                f"{plural(node.get('active_peers') or 0, 'active peer')})")  # fmt: skip
        fields = {
            "event": f"nodes.{verb}.plan",
            "node_id": node["id"],
            "region": node.get("region"),
        }
        click.echo(line(text, **fields), err=True)
    if yes:
        return
    if not sys.stdin.isatty():
        raise BadInput(f"nodes {verb}: not on a terminal, so nothing done; give --yes to "
                       f"{verb} {plural(len(targets), 'node')}")  # fmt: skip
    if not click.confirm(f"{verb.capitalize()} {plural(len(targets), 'node')}?", err=True):
        raise Failed(f"nodes {verb}: nothing done (not confirmed)")


@click.group()
def nodes() -> None:
    """The fleet as the control plane sees it, and the operator's drain."""


@nodes.command("list")
@connection_options
@click.option("--state", type=click.Choice(["active", "draining"]), help="Only this state.")
@click.option("--region", "regions", multiple=True, help="Only this region (repeatable).")
@output_options
def list_nodes(api_url, operator_token_file, ca_file, state, regions, out: Output) -> None:
    """List nodes: id, region, state, drain reason, peers, last heartbeat, agent version
    (-o wide: instance, public IP, drain start, registration, refused re-registrations)."""
    api = make_api(api_url, operator_token_file, ca_file)
    found = [n for n in _call(api, "nodes", state) if not regions or n.get("region") in regions]
    out.print(plural(len(found), "node"), COLUMNS, found, [as_data(n) for n in found])


@nodes.command()
@connection_options
@click.argument("node_id", metavar="ID", callback=lambda _c, _p, v: _node_id(v))
@output_options
def show(api_url, operator_token_file, ca_file, node_id, out: Output) -> None:
    """Everything the control plane knows about node ID (``GET /v1/nodes/{id}``)."""
    api = make_api(api_url, operator_token_file, ca_file)
    node = _call(api, "node", node_id)
    if out.data:
        out.print_data(as_data(node))
        return
    width = max(map(len, node))
    for key, value in node.items():
        if key.endswith("_at") and value is not None:
            value = f"{iso(value)} ({ago(value)})"
        click.echo(f"{key.ljust(width)}  {'' if value is None else value}".rstrip())


@nodes.command()
@connection_options
@click.argument("node_ids", metavar="[ID]...", nargs=-1, callback=_node_ids)
@click.option(
    "--reason",
    type=click.Choice(REASONS),
    default="manual",
    show_default=True,
    help="Why (a node already draining keeps its reason; compromised overrides).",
)
@click.option(
    "--region",
    "regions",
    multiple=True,
    help="Select the active nodes of this region (repeatable).",
)
@click.option(
    "--older-than",
    default=None,
    metavar="DURATION",
    help="Select active nodes registered longer ago than this (30m, 6h, 2d).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be drained; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed off a terminal).")
@output_options
def drain(api_url, operator_token_file, ca_file, node_ids, reason, regions, older_than,
          dry_run, yes, out: Output) -> None:  # fmt: skip
    """Take nodes out of the pool: node IDs, or the active nodes a selector (--region,
    --older-than) picks. Shows what it will do first, then asks (or needs --yes off a
    terminal). The reaper terminates each one once its users have left."""
    selecting = bool(regions or older_than)
    if node_ids and selecting:
        raise BadInput("nodes drain: give node IDs or a selector (--region, --older-than), "
                       "not both")  # fmt: skip
    if not node_ids and not selecting:
        raise BadInput("nodes drain: give node IDs or a selector (--region, --older-than)")
    age = parse_duration(older_than, "--older-than") if older_than else None
    api = make_api(api_url, operator_token_file, ca_file)
    if selecting:
        cutoff = time.time() - (age.total_seconds() if age else 0)
        targets = [
            n for n in _call(api, "nodes", "active")
            if (not regions or n.get("region") in regions)
            and (age is None or (n.get("registered_at") or cutoff) < cutoff)
        ]  # fmt: skip
    else:
        targets = [_call(api, "node", node_id) for node_id in node_ids]
    if not targets:
        click.echo(line("nodes drain: no node matches; nothing done", event="nodes.drain.none"),
                   err=True)  # fmt: skip
        if out.data:
            out.print_data([])
        return
    if dry_run:
        out.print(f"would drain {plural(len(targets), 'node')} (dry run)", COLUMNS, targets,
                  [as_data(n) for n in targets])  # fmt: skip
        return
    _confirm("drain", targets, yes)
    drained, failed = [], []
    for node in targets:  # one failure does not stop the others
        try:
            api.drain(node["id"], reason)
            drained.append(api.node(node["id"]))
        except ApiError as exc:
            failed.append(str(exc))
    if out.data:
        out.print_data([as_data(n) for n in drained])
    else:
        for node in drained:
            kept = node.get("drain_reason") != reason
            note = "; already draining, reason kept (only compromised overrides)" if kept else ""
            click.echo(f"{node['id']} draining ({node.get('drain_reason')}){note}")
    if failed:
        raise Failed(f"{len(failed)} of {len(targets)} not drained: {'; '.join(failed)}")


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
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed off a terminal).")
@output_options
def delete(
    api_url, operator_token_file, ca_file, node_id, force, fleet_kind, stack, yes, out: Output
) -> None:
    """Forget node ID once its instance is gone: its clients are unassigned and its
    instance can never register again. The control plane refuses while the node still
    runs (it heartbeated within three intervals), and an active node needs --force;
    --force terminates the instance through the fleet first (never one outside the
    stack's own group). Asks first on a terminal; needs --yes off one."""
    if force and fleet_kind == "aws" and not stack:
        raise BadInput("--force --fleet aws needs --stack (or IDRA_STACK)")
    api = make_api(api_url, operator_token_file, ca_file)
    node = _call(api, "node", node_id)
    if not force and node.get("state") == "active":
        raise Failed(f"{node_id}: still active; drain it first or give --force")
    _confirm("delete", [node], yes)
    if not force:
        try:
            api.delete(node_id, missing_ok=False)
        except ApiError as exc:
            hint = " (or give --force)" if "HTTP 409" in str(exc) else ""
            raise Failed(f"{exc}{hint}") from None
        _deleted(out, node, f"{node_id} deleted")
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
    _deleted(out, node, f"{node_id} instance {outcome}; deleted")


def _deleted(out: Output, node: dict, message: str) -> None:
    if out.data:
        out.print_data([as_data(node)])
    else:
        click.echo(message)


__all__ = ["COLUMNS", "as_data", "nodes"]
