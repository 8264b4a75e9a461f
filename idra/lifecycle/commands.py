"""``idra canary`` and ``idra reap``. Exit codes: 0 done, 1 a check or call failed,
2 bad usage or input."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from idra.lifecycle import canary as canary_mod
from idra.lifecycle.api import ApiError, OperatorApi
from idra.lifecycle.dnsbl import DEFAULT_ZONES, Check, Verdict, check, make_resolver
from idra.lifecycle.fleet import AwsFleet, Fleet
from idra.lifecycle.probes import load_probes, probe
from idra.lifecycle.reaper import reap as reap_once
from node_daemon.api import is_secure_url

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BadInput(click.ClickException):
    exit_code = 2


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``30m``, ``6h``, ``2d`` or plain seconds."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match:
        raise BadInput(f"--max-drain: {text!r} is not a duration like 30m, 6h or 2d")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2) or "s"])


def _token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise BadInput(f"{path}: {exc.strerror}") from None
    if not token:
        raise BadInput(f"{path}: empty token file")
    return token


def _api(api_url: str, token_file: Path, ca_file: Path | None) -> OperatorApi:
    if not is_secure_url(api_url):
        raise BadInput(f"--api-url: {api_url} must be https:// (plain http only on loopback)")
    return OperatorApi(api_url, _token(token_file), ca_file)


api_options = [
    click.option("--api-url", required=True, envvar="IDRA_API_URL", help="Control-plane URL."),
    click.option(
        "--operator-token-file",
        required=True,
        type=click.Path(path_type=Path),
        envvar="IDRA_OPERATOR_TOKEN_FILE",
        help="File holding the operator token.",
    ),
    click.option("--ca-file", type=click.Path(exists=True, path_type=Path), default=None),
    click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
]


def with_api_options(command):
    for option in reversed(api_options):
        command = option(command)
    return command


@click.command()
@with_api_options
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
def canary(api_url, operator_token_file, ca_file, as_json, zones, nameserver, probes,
           probe_source, state_file, every, runs) -> None:  # fmt: skip
    """Check active nodes' reputation; drain a node listed on two consecutive runs."""
    api = _api(api_url, operator_token_file, ca_file)
    try:
        targets = load_probes(probes) if probes else []
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    sources = dict(_pair(item) for item in probe_source)
    resolver = make_resolver(nameserver)
    zones = zones or DEFAULT_ZONES

    def checks(node: dict) -> list[Check]:
        results = [check(node["public_ip"], zone, resolver) for zone in zones]
        source = sources.get(node["id"]) or sources.get(node["public_ip"])
        if source:
            results += [probe(target, source) for target in targets]
        return results

    failed, done = False, 0
    while True:
        try:
            state = canary_mod.load_state(state_file)
            nodes = api.nodes("active")
            reports, state = canary_mod.run_once(
                nodes, checks, lambda node_id: api.drain(node_id, "blocked"), state
            )
            canary_mod.save_state(state_file, state)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None
        _print_canary(reports, as_json)
        failed = any(r.verdict is Verdict.ERROR for r in reports)
        done += 1
        if every is None or (runs and done >= runs):
            break
        time.sleep(every)
    if failed:
        raise SystemExit(1)


def _pair(text: str) -> tuple[str, str]:
    node, sep, address = text.partition("=")
    if not sep or not node or not address:
        raise BadInput(f"--probe-source: {text!r} is not NODE=ADDRESS")
    return node, address


def _print_canary(reports: list[canary_mod.NodeReport], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in reports]))
        return
    table = Table("node", "public ip", "verdict", "confirmations", "drained", "checks")
    for r in reports:
        detail = ", ".join(f"{c.name}: {c.verdict.value}" for c in r.checks)
        table.add_row(r.node_id, r.public_ip, r.verdict.value, str(r.confirmations),
                      "yes" if r.drained else "", detail)  # fmt: skip
    Console().print(table)


@click.command()
@with_api_options
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
    an instance outside the stack's own group (refused, exit 1)."""
    limit = parse_duration(max_drain)
    if fleet_kind == "aws" and not stack:
        raise BadInput("--fleet aws needs --stack (or IDRA_STACK)")
    api = _api(api_url, operator_token_file, ca_file)
    fleet = _fleet(fleet_kind, stack)
    try:
        decisions = reap_once(api, fleet, limit, regions=regions, dry_run=dry_run)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([d.as_dict() for d in decisions]))
    else:
        table = Table("node", "reason", "action", "why", "outcome")
        for d in decisions:
            action = f"{d.action} (dry run)" if dry_run and d.action == "terminate" else d.action
            table.add_row(d.node_id, d.reason, action, d.why, d.outcome)
        Console().print(table)
    if any(d.action == "refused" for d in decisions):
        raise SystemExit(1)


def _fleet(kind: str, stack: str | None) -> Fleet:
    if kind == "aws":
        import boto3

        return AwsFleet(lambda region: boto3.client("autoscaling", region_name=region), stack)
    from idra.lab.fleet import LabFleet  # the local lab (idra lab up)

    return LabFleet()


__all__ = ["canary", "parse_duration", "reap"]
