"""``idra canary`` and ``idra reap``. Exit codes: 0 done, 1 a check or call failed,
2 bad usage or input."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from idra.cliutil import (
    BadInput,
    Column,
    Failed,
    Output,
    connection_options,
    cwd_option,
    make_api,
    output_options,
    parse_duration,
    plural,
)
from idra.config import ConfigError, load_stack
from idra.lifecycle import canary as canary_mod
from idra.lifecycle.api import ApiError
from idra.lifecycle.checks import NodeChecks, probing
from idra.lifecycle.dnsbl import DEFAULT_ZONES, Check, Verdict, make_resolver
from idra.lifecycle.fleet import AwsFleet, Fleet
from idra.lifecycle.reaper import reap as reap_once

log = logging.getLogger("idra.canary")
NO_KEY = "--probes: give --state-file or --key-file (where the canary keeps its WireGuard key)"


def probe_options(command: Callable) -> Callable:
    """The probes and their tunnels (``idra canary``, ``idra ops run``)."""
    options = (
        click.option("--probes", type=click.Path(path_type=Path), default=None,
                     help="Probes file: HTTP probes made through each node."),
        click.option("--whoami-url", default="https://checkip.amazonaws.com/",
                     show_default=True, help="A 'what is my IP' service: probes count only "
                     "if it sees the node's address."),
        click.option("--tunnel-dns", default=None, metavar="ADDRESS",
                     help="DNS server used inside the tunnels [default: the host's "
                     "resolv.conf]."),
        click.option("--handshake-timeout", type=click.FloatRange(1, 120), default=10,
                     show_default=True, help="Seconds a tunnel may take to come up."),
    )  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@connection_options
@output_options
@click.option("--dnsbl", "zones", multiple=True, help="Blocklist zone (repeatable).")
@click.option("--nameserver", default=None, help="DNS server HOST[:PORT] (default: system).")
@probe_options
@click.option(
    "--probe-source",
    multiple=True,
    metavar="NODE=ADDRESS",
    help="Local address whose traffic leaves through NODE (id or public IP).",
)
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Keep the confirmations (and the nodes with a canary peer) in this file "
    "[default: confirmations in the control plane, shared with idra ops run].",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The canary's WireGuard key (made once, mode 0600) [default: canary.key next to "
    "--state-file].",
)
@click.option("--every", type=click.FloatRange(min=1), default=None, help="Repeat every S s.")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Stop after N runs.")
@click.option(
    "--concurrency", type=click.IntRange(1, 256), default=16, show_default=True,
    help="Nodes checked at once.",
)  # fmt: skip
def canary(api_url, operator_token_file, ca_file, out: Output, zones, nameserver, probes,
           probe_source, state_file, key_file, whoami_url, tunnel_dns, handshake_timeout,
           every, runs, concurrency) -> None:  # fmt: skip
    """Check active nodes' reputation; drain a node listed on two consecutive runs.

    HTTP probes (--probes) leave through each node: the canary sets its own WireGuard
    peer on the node (POST /v1/nodes/{id}/canary) and probes from a network namespace
    whose only way out is that tunnel (needs root); --probe-source overrides per node.
    With --every, a pass that fails (control plane down) is logged and the next one
    runs on time. Exit 1 when a pass failed or a check gave an error."""
    api = make_api(api_url, operator_token_file, ca_file)
    sources = dict(_pair(item) for item in probe_source)
    try:
        resolver = make_resolver(nameserver)
        canary_mod.load_state(state_file)
        if key_file is None and state_file is not None:
            key_file = state_file.with_name("canary.key")
        settings = None
        if probes:
            settings = probing(probes, key_file, whoami_url, handshake_timeout, tunnel_dns,
                               sources, no_key=NO_KEY)  # fmt: skip
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    checks = NodeChecks(api, zones or DEFAULT_ZONES, resolver, settings)

    def one_pass() -> list[canary_mod.NodeReport]:
        nodes = api.nodes("active")
        state = canary_mod.load_state(state_file) if state_file else api.canary_confirmations()
        checks.begin(nodes, canary_mod.load_peers(state_file))
        with _progress(len(nodes)) as advance:
            reports, state = canary_mod.run_once(
                nodes, checks, lambda node_id: api.drain(node_id, "blocked"), state,
                workers=concurrency, progress=advance,
            )  # fmt: skip
        if state_file:
            canary_mod.save_state(state_file, state, checks.peers)
        else:
            api.save_canary_confirmations(state)
        return reports

    failed, done = False, 0
    while True:
        try:
            reports = one_pass()
        except (ApiError, OSError, ValueError) as exc:
            if every is None:
                raise Failed(str(exc)) from None
            log.error("canary pass failed, next in %ss: %s", every, exc,
                      extra={"event": "canary.pass_failed"})  # fmt: skip
            failed = True
        else:
            out.print(f"canary: {plural(len(reports), 'active node')}", CANARY_COLUMNS,
                      [r.as_dict() for r in reports])  # fmt: skip
            failed |= any(r.verdict is Verdict.ERROR or r.drain_error for r in reports)
        done += 1
        if every is None or (runs and done >= runs):
            break
        time.sleep(every)
    if failed:
        sys.exit(1)


class _progress:
    """A progress bar on a terminal (stderr); plain lines otherwise (cron, CI)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self._bar = total, 0, None

    def __enter__(self) -> Callable[[dict[str, Any], list[Check]], None]:
        if sys.stderr.isatty() and self.total:
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("checking nodes", total=self.total)
        return self.advance

    def advance(self, node: dict[str, Any], found: list[Check]) -> None:
        self.done += 1
        if self._bar:
            self._bar.advance(self._task)
            return
        verdict = canary_mod.NodeReport(node["id"], node["public_ip"], found).verdict.value
        fields = {"event": "canary.checked", "node_id": node["id"], "region": node.get("region"),
                  "verdict": verdict, "done": self.done, "total": self.total}  # fmt: skip
        log.info("checked %d/%d %s: %s", self.done, self.total, node["id"], verdict,
                 extra=fields)  # fmt: skip

    def __exit__(self, *_: object) -> None:
        if self._bar:
            self._bar.stop()


def _pair(text: str) -> tuple[str, str]:
    node, sep, address = text.partition("=")
    if not sep or not node or not address:
        raise BadInput(f"--probe-source: {text!r} is not NODE=ADDRESS")
    return node, address


def _checks(report: dict[str, Any]) -> str:
    return ", ".join(f"{c['name']}: {c['verdict']}" for c in report["checks"])


def _drained(report: dict[str, Any]) -> str:
    if report["drained"]:
        return "yes"
    return f"failed: {report['drain_error']}" if report["drain_error"] else ""


CANARY_COLUMNS = (
    Column("node", lambda r: r["node_id"]),
    Column("public ip", lambda r: r["public_ip"]),
    Column("verdict", lambda r: r["verdict"]),
    Column("confirmations", lambda r: r["confirmations"]),
    Column("drained", _drained),
    Column("checks", _checks),
)
REAP_COLUMNS = (
    Column("node", lambda d: d["node_id"]),
    Column("reason", lambda d: d["reason"]),
    Column("action", lambda d: d["action"]),
    Column("why", lambda d: d["why"]),
    Column("outcome", lambda d: d["outcome"]),
)


@click.command()
@connection_options
@output_options
@click.option("--fleet", "fleet_kind", type=click.Choice(["aws", "lab"]), default="aws")
@click.option(
    "--stack",
    envvar="IDRA_STACK",
    default=None,
    help="The stack: a node must be in its group idra-<stack>-<region> with its tags "
    "(required with --fleet aws); maxDrainSeconds from Pulumi.<stack>.yaml.",
)
@click.option("--region", "regions", multiple=True, help="Only nodes in these regions.")
@click.option("--max-drain", default=None, help="Longest wait for users [default: the stack's "
              "maxDrainSeconds with --stack, else 6h].")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")
@cwd_option
def reap(api_url, operator_token_file, ca_file, out: Output, fleet_kind, stack, regions,
         max_drain, dry_run, cwd) -> None:  # fmt: skip
    """Terminate draining nodes whose users have left (compromised ones at once); never
    an instance outside the stack's own group (refused).

    A node whose termination fails or is refused keeps its record and its row says why;
    the pass goes on and exits 1."""
    if max_drain is None and stack:
        try:
            limit = dt.timedelta(seconds=load_stack(stack, cwd.resolve()).max_drain_seconds)
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
    else:
        limit = parse_duration(max_drain or "6h")
    api = make_api(api_url, operator_token_file, ca_file)
    if fleet_kind == "aws" and not stack:
        raise BadInput("--fleet aws needs --stack (or IDRA_STACK)")
    fleet = fleet_for(fleet_kind, stack)
    try:
        decisions = reap_once(api, fleet, limit, regions=regions, dry_run=dry_run)
    except ApiError as exc:
        raise Failed(str(exc)) from None
    rows = [d.as_dict() for d in decisions]
    if dry_run and not out.data:
        rows = [r | {"action": f"{r['action']} (dry run)"} if r["action"] == "terminate" else r
                for r in rows]  # fmt: skip
    out.print(f"reap: {plural(len(decisions), 'draining node')}", REAP_COLUMNS, rows)
    failures = sum(d.failed for d in decisions)
    if failures:
        raise Failed(f"{failures} of {len(decisions)} draining nodes failed or were refused; "
                     "their rows say why")  # fmt: skip


def fleet_for(kind: str, stack: str | None) -> Fleet:
    """The fleet backend (``reap``, ``nodes delete --force``)."""
    if kind == "aws":
        import boto3

        return AwsFleet(lambda region: boto3.client("autoscaling", region_name=region), stack)
    from idra.lab.fleet import LabFleet  # the local lab (idra lab up)

    return LabFleet()


__all__ = ["canary", "fleet_for", "parse_duration", "reap"]
