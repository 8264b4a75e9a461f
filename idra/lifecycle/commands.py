"""``idra canary`` and ``idra reap``. Exit codes: 0 done, 1 a check or call failed,
2 bad usage or input."""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from idra.cliutil import (
    BadInput,
    Failed,
    connection_options,
    json_option,
    make_api,
    now_utc,
    print_json,
    print_table,
)
from idra.lifecycle import canary as canary_mod
from idra.lifecycle.api import ApiError
from idra.lifecycle.dnsbl import DEFAULT_ZONES, Check, Verdict, check, make_resolver
from idra.lifecycle.fleet import AwsFleet, Fleet
from idra.lifecycle.probes import load_probes, probe
from idra.lifecycle.reaper import reap as reap_once

log = logging.getLogger("idra.canary")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``30m``, ``6h``, ``2d`` or plain seconds."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match:
        raise BadInput(f"--max-drain: {text!r} is not a duration like 30m, 6h or 2d")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2) or "s"])


@click.command()
@connection_options
@json_option
@click.option("--dnsbl", "zones", multiple=True, help="Blocklist zone (repeatable).")
@click.option("--nameserver", default=None, help="DNS server HOST[:PORT] (default: system).")
@click.option("--probes", type=click.Path(path_type=Path), default=None, help="Probes file.")
@click.option(
    "--probe-source",
    multiple=True,
    metavar="NODE=ADDRESS",
    help="Local address whose traffic leaves through NODE (id or public IP).",
)
@click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--every", type=click.FloatRange(min=1), default=None, help="Repeat every S s.")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Stop after N runs.")
@click.option(
    "--concurrency", type=click.IntRange(1, 256), default=16, show_default=True,
    help="Nodes checked at once.",
)  # fmt: skip
def canary(api_url, operator_token_file, ca_file, as_json, zones, nameserver, probes,
           probe_source, state_file, every, runs, concurrency) -> None:  # fmt: skip
    """Check active nodes' reputation; drain a node listed on two consecutive runs.

    With --every, a pass that fails (control plane down) is logged and the next one
    runs on time. Exit 1 when a pass failed or a check gave an error."""
    api = make_api(api_url, operator_token_file, ca_file)
    try:
        targets = load_probes(probes) if probes else []
        resolver = make_resolver(nameserver)
        canary_mod.load_state(state_file)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    sources = dict(_pair(item) for item in probe_source)
    zones = zones or DEFAULT_ZONES

    def checks(node: dict) -> list[Check]:
        results = [check(node["public_ip"], zone, resolver) for zone in zones]
        source = sources.get(node["id"]) or sources.get(node["public_ip"])
        if source:
            results += [probe(target, source) for target in targets]
        return results

    def one_pass() -> list[canary_mod.NodeReport]:
        state = canary_mod.load_state(state_file)
        nodes = api.nodes("active")
        with _progress(len(nodes)) as advance:
            reports, state = canary_mod.run_once(
                nodes, checks, lambda node_id: api.drain(node_id, "blocked"), state,
                workers=concurrency, progress=advance,
            )  # fmt: skip
        canary_mod.save_state(state_file, state)
        return reports

    failed, done = False, 0
    while True:
        try:
            reports = one_pass()
        except (ApiError, OSError, ValueError) as exc:
            if every is None:
                raise Failed(str(exc)) from None
            log.error("canary pass failed, next in %ss: %s", every, exc)
            failed = True
        else:
            _print_canary(reports, as_json)
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
        verdict = canary_mod.NodeReport(node["id"], node["public_ip"], found).verdict
        click.echo(f"{now_utc()} checked {self.done}/{self.total} {node['id']}: {verdict}",
                   err=True)  # fmt: skip

    def __exit__(self, *_: object) -> None:
        if self._bar:
            self._bar.stop()


def _pair(text: str) -> tuple[str, str]:
    node, sep, address = text.partition("=")
    if not sep or not node or not address:
        raise BadInput(f"--probe-source: {text!r} is not NODE=ADDRESS")
    return node, address


def _print_canary(reports: list[canary_mod.NodeReport], as_json: bool) -> None:
    if as_json:
        print_json([r.as_dict() for r in reports])
        return
    rows = []
    for r in reports:
        detail = ", ".join(f"{c.name}: {c.verdict.value}" for c in r.checks)
        drained = "yes" if r.drained else (f"failed: {r.drain_error}" if r.drain_error else "")
        rows.append([r.node_id, r.public_ip, r.verdict.value, r.confirmations, drained, detail])
    headers = ["node", "public ip", "verdict", "confirmations", "drained", "checks"]
    print_table(f"canary: {len(reports)} active nodes", headers, rows)


@click.command()
@connection_options
@json_option
@click.option("--fleet", "fleet_kind", type=click.Choice(["aws", "lab"]), default="aws")
@click.option(
    "--stack",
    envvar="IDRA_STACK",
    default=None,
    help="Stack whose group idra-<stack>-<region> and tags a node must have (--fleet aws).",
)
@click.option("--region", "regions", multiple=True, help="Only nodes in these regions.")
@click.option("--max-drain", default="6h", show_default=True, help="Longest wait for users.")
@click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")
def reap(api_url, operator_token_file, ca_file, as_json, fleet_kind, stack, regions, max_drain,
         dry_run) -> None:  # fmt: skip
    """Terminate draining nodes whose users have left (compromised ones at once); never
    an instance outside the stack's own group (refused).

    A node whose termination fails or is refused keeps its record and its row says why;
    the pass goes on and exits 1."""
    limit = parse_duration(max_drain)
    api = make_api(api_url, operator_token_file, ca_file)
    if fleet_kind == "aws" and not stack:
        raise BadInput("--fleet aws needs --stack (or IDRA_STACK)")
    fleet = _fleet(fleet_kind, stack)
    try:
        decisions = reap_once(api, fleet, limit, regions=regions, dry_run=dry_run)
    except ApiError as exc:
        raise Failed(str(exc)) from None
    if as_json:
        print_json([d.as_dict() for d in decisions])
    else:
        rows = []
        for d in decisions:
            action = f"{d.action} (dry run)" if dry_run and d.action == "terminate" else d.action
            rows.append([d.node_id, d.reason, action, d.why, d.outcome])
        headers = ["node", "reason", "action", "why", "outcome"]
        print_table(f"reap: {len(decisions)} draining nodes", headers, rows)
    failures = sum(d.failed for d in decisions)
    if failures:
        raise Failed(f"{failures} of {len(decisions)} draining nodes failed or were refused; "
                     "their rows say why")  # fmt: skip


def _fleet(kind: str, stack: str | None) -> Fleet:
    if kind == "aws":
        import boto3

        return AwsFleet(lambda region: boto3.client("autoscaling", region_name=region), stack)
    from idra.lab.fleet import LabFleet  # the local lab (idra lab up)

    return LabFleet()


__all__ = ["canary", "parse_duration", "reap"]
