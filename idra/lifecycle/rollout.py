"""``idra rollout``: move the fleet onto a new launch template (new image, user-data or
agent) node by node, through drain (ARCHITECTURE §5).

Each run marks active nodes that run an older launch-template version than their group
(or another agent version than ``--agent-version``) as draining with reason ``outdated``
— never more than N draining at once (default 10 % of the pool, at least one), never the
last healthy node of a region, emptiest first. The reaper then terminates each one when
its users have left or at the maximum drain, and the group launches its replacement from
the current template. Idempotent; run it on a schedule next to the reaper.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from idra.cliutil import (
    BadInput,
    Failed,
    connection_options,
    json_option,
    make_api,
    print_json,
    print_table,
)
from idra.config import ConfigError, load_stack
from idra.lifecycle.api import ApiError, OperatorApi

HEALTHY_WITHIN_S = 120  # a node counts as healthy with a heartbeat this recent
VERSION_TAG = "aws:ec2launchtemplate:version"  # set by EC2 on every instance from a template
TEMPLATE_TAG = "aws:ec2launchtemplate:id"


@dataclass
class Step:
    node_id: str
    region: str
    action: str  # "drain" or "hold"
    why: str

    def as_dict(self) -> dict[str, str]:
        return vars(self).copy()


def budget(pool: int, max_draining: int | None, percent: float) -> int:
    """How many nodes may drain at once: a count, or a share of the pool (at least 1)."""
    if max_draining is not None:
        return max_draining
    return max(1, math.ceil(pool * percent / 100))


class AwsTemplates:
    """Which instances were launched from an older template than their group's current
    one. Only groups named in ``groups`` (region -> group name) are looked at."""

    def __init__(self, client: Callable[[str, str], Any], groups: dict[str, str]) -> None:
        self._client = client  # (service, region) -> boto3 client
        self._groups = groups

    def current(self, region: str) -> tuple[str, str]:
        """(template id, version number) the region's group launches from now."""
        name = self._groups[region]
        found = self._client("autoscaling", region).describe_auto_scaling_groups(
            AutoScalingGroupNames=[name]
        )["AutoScalingGroups"]
        if not found:
            raise ApiError(f"{region}: no auto-scaling group {name}")
        group = found[0]
        spec = (
            group.get("LaunchTemplate")
            or group["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]
        )
        template_id, version = spec["LaunchTemplateId"], str(spec.get("Version") or "$Default")
        if version in ("$Latest", "$Default"):
            template = self._client("ec2", region).describe_launch_templates(
                LaunchTemplateIds=[template_id]
            )["LaunchTemplates"][0]
            key = "LatestVersionNumber" if version == "$Latest" else "DefaultVersionNumber"
            version = str(template[key])
        return template_id, version

    def outdated(self, region: str, instance_ids: Collection[str]) -> dict[str, str]:
        """Instance id -> why it is outdated (instances of other groups: not listed)."""
        if not instance_ids or region not in self._groups:
            return {}
        template_id, version = self.current(region)
        ours = self._members(region, instance_ids)
        if not ours:  # an empty id list would make EC2 list every instance of the region
            return {}
        tags: dict[str, dict[str, str]] = {}
        ec2 = self._client("ec2", region)
        for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=sorted(ours)):
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    tags[instance["InstanceId"]] = {
                        t["Key"]: t["Value"] for t in instance.get("Tags", [])
                    }
        result = {}
        for instance_id, its in tags.items():
            if its.get(TEMPLATE_TAG) != template_id:
                result[instance_id] = "launched from another launch template"
            elif its.get(VERSION_TAG) != version:
                result[instance_id] = (
                    f"launch template v{its.get(VERSION_TAG)}, group on v{version}"
                )
        return result

    def _members(self, region: str, instance_ids: Collection[str]) -> set[str]:
        client = self._client("autoscaling", region)
        ids, members = sorted(instance_ids), set()
        for start in range(0, len(ids), 50):  # the API's limit per call
            found = client.describe_auto_scaling_instances(InstanceIds=ids[start : start + 50])
            members |= {
                i["InstanceId"]
                for i in found["AutoScalingInstances"]
                if i["AutoScalingGroupName"] == self._groups[region]
            }
        return members


def plan(
    active: list[dict[str, Any]],
    draining: list[dict[str, Any]],
    outdated: dict[str, str],
    limit: int,
    now: float,
) -> list[Step]:
    """Which outdated active nodes to drain now (node id -> why in ``outdated``)."""
    fresh = [n for n in active if now - float(n.get("last_heartbeat_at") or 0) < HEALTHY_WITHIN_S]
    healthy = Counter(n["region"] for n in fresh)
    fresh_ids = {n["id"] for n in fresh}
    slots = limit - len(draining)
    steps = []
    candidates = sorted(
        (n for n in active if n["id"] in outdated),
        key=lambda n: (n.get("active_peers") or 0, n["id"]),
    )
    for node in candidates:
        node_id, region = node["id"], node["region"]
        left = healthy[region] - (node_id in fresh_ids)
        if slots <= 0:
            steps.append(Step(node_id, region, "hold", f"{limit} draining already (limit)"))
        elif left < 1:
            steps.append(Step(node_id, region, "hold", f"last healthy node in {region}"))
        else:
            steps.append(Step(node_id, region, "drain", outdated[node_id]))
            slots -= 1
            healthy[region] = left
    return steps


def rollout(
    api: OperatorApi,
    templates: AwsTemplates | None,
    *,
    regions: Collection[str],
    max_draining: int | None = None,
    percent: float = 10,
    agent_version: str | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> list[Step]:
    """One pass: mark up to the budget of outdated nodes ``outdated``; return the steps."""
    now = time.time() if now is None else now
    active = [n for n in api.nodes("active") if n.get("region") in regions]
    draining = [n for n in api.nodes("draining") if n.get("region") in regions]
    limit = budget(len(active) + len(draining), max_draining, percent)
    why: dict[str, str] = {}
    for region in regions:
        here = {n["instance_id"]: n["id"] for n in active if n["region"] == region}
        if templates is not None:
            for instance_id, reason in templates.outdated(region, here).items():
                why[here[instance_id]] = reason
    if agent_version:
        for node in active:
            if node.get("agent_version") != agent_version:
                why.setdefault(
                    node["id"], f"agent {node.get('agent_version')}, want {agent_version}"
                )
    steps = plan(active, draining, why, limit, now)
    for step in steps:
        if step.action == "drain" and not dry_run:
            api.drain(step.node_id, "outdated")
    return steps


@click.command("rollout")
@connection_options
@json_option
@click.option("--stack", required=True, help="Stack: its regions and groups (Pulumi.<stack>.yaml).")
@click.option("--region", "regions", multiple=True, help="Only these regions of the stack.")
@click.option(
    "--max-draining",
    type=click.IntRange(min=1),
    default=None,
    help="Most nodes draining at once [default: --max-draining-percent of the pool].",
)
@click.option(
    "--max-draining-percent",
    type=click.FloatRange(0, 100, min_open=True),
    default=10.0,
    show_default=True,
)
@click.option("--agent-version", default=None, help="Also roll nodes on another agent version.")
@click.option("--dry-run", is_flag=True, help="Show what would be drained; change nothing.")
def rollout_command(api_url, operator_token_file, ca_file, as_json, stack, regions, max_draining,
                    max_draining_percent, agent_version, dry_run) -> None:  # fmt: skip
    """Drain nodes on an old launch template (or agent), a bounded number at a time."""
    try:
        cfg = load_stack(stack)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    for region in regions:
        if region not in cfg.regions:
            raise BadInput(f"--region: {region} is not a region of stack {stack}")
    regions = regions or tuple(cfg.regions)
    api = make_api(api_url, operator_token_file, ca_file)
    import boto3

    templates = AwsTemplates(
        lambda service, region: boto3.client(service, region_name=region),
        {region: cfg.asg_name(region) for region in regions},
    )
    try:
        steps = rollout(api, templates, regions=regions, max_draining=max_draining,
                        percent=max_draining_percent, agent_version=agent_version,
                        dry_run=dry_run)  # fmt: skip
    except (ApiError, BotoCoreError, ClientError) as exc:
        raise Failed(str(exc)) from None
    if as_json:
        print_json([s.as_dict() for s in steps])
        return
    rows = [(s.node_id, s.region, f"{s.action} (dry run)" if dry_run else s.action, s.why)
            for s in steps]  # fmt: skip
    print_table("idra rollout", ("node", "region", "action", "why"), rows)
