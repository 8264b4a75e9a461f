"""``idra ops run --stack S``: the command of the lifecycle service (:mod:`idra.lifecycle.ops`)."""

from __future__ import annotations

import datetime as dt
import re
import signal
import threading
from pathlib import Path

import click

from idra.cliutil import BadInput, Failed, connection_options, cwd_option, make_api
from idra.lifecycle.checks import probing
from idra.lifecycle.commands import probe_options
from idra.lifecycle.dnsbl import DEFAULT_ZONES, make_resolver
from idra.lifecycle.fleet import AwsFleet
from idra.lifecycle.ops import Confirmations, Lease, Ops, default_holder, passes
from idra.lifecycle.rollout import AwsTemplates, stack_regions

SECONDS = click.FloatRange(min=0.1)
HOLDER = re.compile(r"[\x21-\x7e]{1,128}")  # as the control plane accepts it


@click.group()
def ops() -> None:
    """The lifecycle service: canary, rollout and scale-in, reaper in one loop."""


@ops.command("fetch-token")
@click.option("--secret-id", required=True, help="Secrets Manager id of the operator token.")
@click.option("--region", required=True, help="Region of the secret.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--attempts", type=click.IntRange(1, 20), default=8, show_default=True)
def fetch_token(secret_id: str, region: str, out: Path, attempts: int) -> None:
    """Write the operator token to OUT (0600, atomic) with the instance's role; retried."""
    from node_daemon.aws import SecretError, fetch_secret_with_retries

    try:
        fetch_secret_with_retries(secret_id, region, out, attempts,
                                  warn=lambda text: click.echo(text, err=True))  # fmt: skip
    except SecretError as exc:
        raise Failed(str(exc)) from None


@ops.command("run")
@connection_options
@cwd_option
@click.option("--stack", required=True, help="Stack: its regions, groups, intervals and lease.")
@click.option("--fleet", "fleet_kind", type=click.Choice(["aws", "lab"]), default="aws",
              show_default=True, help="aws: the stack's groups, rollout, CloudWatch; lab: "
              "the local lab (idra lab up), no rollout, no metrics.")  # fmt: skip
@click.option("--dnsbl", "zones", multiple=True, help="Blocklist zone (repeatable).")
@click.option("--nameserver", default=None, help="DNS server HOST[:PORT] (default: system).")
@probe_options
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The canary's WireGuard key (made once, mode 0600), for --probes.")  # fmt: skip
@click.option("--holder", default=None,
              help="Lease holder id (no spaces) [default: hostname:pid].")  # fmt: skip
@click.option("--canary-every", type=SECONDS, default=None,
              help="Override idra:opsCanaryIntervalSeconds.")  # fmt: skip
@click.option("--rollout-every", type=SECONDS, default=None,
              help="Override idra:opsRolloutIntervalSeconds.")  # fmt: skip
@click.option("--reap-every", type=SECONDS, default=None,
              help="Override idra:opsReaperIntervalSeconds.")  # fmt: skip
@click.option("--lease-seconds", type=click.FloatRange(1, 3600), default=None,
              help="Override idra:opsLeaseSeconds.")  # fmt: skip
@click.option("--ticks", type=click.IntRange(min=1), default=None, help="Stop after N ticks.")
def run(api_url, operator_token_file, ca_file, cwd, stack, fleet_kind, zones, nameserver,
        probes, whoami_url, tunnel_dns, handshake_timeout, key_file, holder, canary_every,
        rollout_every, reap_every, lease_seconds, ticks) -> None:  # fmt: skip
    """Run the stack's lifecycle loop until SIGTERM or SIGINT (then release the lease).

    Only the lease holder acts; the others wait as standby and take over once its lease
    expired. The lease and the canary's confirmations are kept in the control plane, so
    a replaced loop carries on. Each pass logs one line; a failed pass is logged and the
    loop goes on. With --probes the canary pass also probes through its own tunnel to
    each node (needs root), as ``idra canary --probes`` does. --fleet lab runs the loop
    against the local lab: its fleet replaces a reaped node, there is no rollout pass
    (the lab has no launch templates) and no CloudWatch metric (the log is the record)."""
    cfg = stack_regions(stack, cwd, ())
    intervals = {
        "canary": canary_every or cfg.ops_canary_interval_seconds,
        "rollout": rollout_every or cfg.ops_rollout_interval_seconds,
        "reaper": reap_every or cfg.ops_reaper_interval_seconds,
    }
    lab = fleet_kind == "lab"
    if lab and rollout_every:
        raise BadInput("--rollout-every: no rollout pass with --fleet lab")
    if lab:
        del intervals["rollout"]
    tick = min(intervals.values())
    lease_s = lease_seconds or cfg.ops_lease_seconds
    if lease_s <= tick:
        raise BadInput(f"the lease ({lease_s:g}s) must outlast a tick ({tick:g}s)")
    holder = holder or default_holder()
    if not HOLDER.fullmatch(holder):
        raise BadInput("--holder: 1-128 printable ASCII characters, no spaces")
    api = make_api(api_url, operator_token_file, ca_file)
    try:
        resolver = make_resolver(nameserver)
        settings = None
        if probes:
            settings = probing(probes, key_file, whoami_url, handshake_timeout, tunnel_dns, {},
                               no_key="--probes: give --key-file (the canary's key)")  # fmt: skip
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    regions = list(cfg.regions)
    if lab:
        from idra.lab.fleet import LabFleet

        templates, fleet, cloudwatch = None, LabFleet(), None
    else:
        import boto3

        templates = AwsTemplates(lambda service, r: boto3.client(service, region_name=r),
                                 {r: cfg.asg_name(r) for r in regions})  # fmt: skip
        fleet = AwsFleet(lambda r: boto3.client("autoscaling", region_name=r), stack)
        cloudwatch = boto3.client("cloudwatch", region_name=cfg.primary_region)
    values: dict[str, float] = {}
    loop = Ops(
        stack=stack,
        lease=Lease(api, holder, lease_s),
        cloudwatch=cloudwatch,
        passes=passes(
            api=api,
            templates=templates,
            fleet=fleet,
            regions=regions,
            intervals=intervals,
            max_drain=dt.timedelta(seconds=cfg.max_drain_seconds),
            confirmations=Confirmations(api),
            zones=tuple(zones) or DEFAULT_ZONES,
            resolver=resolver,
            values=values,
            probing=settings,
        ),
        tick=tick,
        values=values,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    kinds = ", ".join(job.name for job in loop.passes)
    click.echo(f"ops: {stack} ({fleet_kind} fleet: {kinds}), every {tick:g}s, lease "
               f"{lease_s:g}s as {loop.lease.holder}", err=True)  # fmt: skip
    loop.run(stop, ticks)
