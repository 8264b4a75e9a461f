"""``idra scale-in``: the fleet shrinks through drain (ARCHITECTURE §5).

Target tracking may lower a group's desired capacity, but every instance is protected
from scale-in, so AWS cannot terminate a serving node: the group keeps more InService
instances than it wants. Each run drains, per region, one node of that excess with
reason ``scale_in`` — the emptiest (a node on an older template first) — never the last
node of a region and never below the group's minimum. The reaper terminates it once its
users have left, without decrementing desired capacity: AWS already lowered it, so no
replacement is launched. Idempotent; run it on a schedule next to the rollout.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from idra.cliutil import (
    Failed,
    Output,
    connection_options,
    cwd_option,
    make_api,
    output_options,
)
from idra.lifecycle.api import ApiError, OperatorApi
from idra.lifecycle.rollout import (
    AwsTemplates,
    GroupView,
    Step,
    is_fresh,
    report_steps,
    stack_region_options,
    stack_regions,
)


def pick(region: str, view: GroupView, active: list[dict[str, Any]],
         draining: list[dict[str, Any]], now: float) -> Step | None:  # fmt: skip
    """The node of ``region`` to drain for scale-in now, as a step (or None: no excess)."""
    leaving = {n["instance_id"] for n in draining}
    staying = [i for i, s in view.states.items() if s == "InService" and i not in leaving]
    excess = len(staying) - view.desired
    if excess <= 0:
        return None
    floor = max(view.min_size, 1)  # never below min, never the last node of a region
    in_service = set(staying)
    serving = [n for n in active if n["instance_id"] in in_service and is_fresh(n, now)]
    if not serving:
        return None
    node = min(
        serving,
        key=lambda n: (n["instance_id"] not in view.outdated, n.get("active_peers") or 0, n["id"]),
    )
    if len(staying) - 1 < floor:
        return Step(node["id"], region, "hold", f"{len(staying)} in service: at the floor {floor}")
    return Step(node["id"], region, "drain",
                f"{len(staying)} in service, desired {view.desired}")  # fmt: skip


def scale_in(
    api: OperatorApi,
    templates: AwsTemplates,
    *,
    regions: Collection[str],
    dry_run: bool = False,
    now: float | None = None,
) -> list[Step]:
    """One pass: at most one ``scale_in`` drain per region; return the steps."""
    now = time.time() if now is None else now
    active = api.nodes("active")
    draining = api.nodes("draining")
    steps = []
    for region in regions:
        here = [n for n in active if n.get("region") == region]
        if not here:
            continue
        view = templates.view(region, now)
        step = pick(region, view, here, [n for n in draining if n.get("region") == region], now)
        if step is None:
            continue
        if step.action == "drain" and not dry_run:
            api.drain(step.node_id, "scale_in")
        steps.append(step)
    return steps


@click.command("scale-in")
@connection_options
@output_options
@cwd_option
@stack_region_options
@click.option("--dry-run", is_flag=True, help="Show what would be drained; change nothing.")
def scale_in_command(api_url, operator_token_file, ca_file, out: Output, cwd, stack, regions,
                     dry_run) -> None:  # fmt: skip
    """Drain the emptiest node of each group holding more instances than it wants."""
    cfg = stack_regions(stack, cwd, regions)
    regions = regions or tuple(cfg.regions)
    api = make_api(api_url, operator_token_file, ca_file)
    import boto3

    templates = AwsTemplates(
        lambda service, region: boto3.client(service, region_name=region),
        {region: cfg.asg_name(region) for region in regions},
    )
    try:
        steps = scale_in(api, templates, regions=regions, dry_run=dry_run)
    except (ApiError, BotoCoreError, ClientError) as exc:
        raise Failed(str(exc)) from None
    report_steps(steps, out, dry_run, title="idra scale-in")
