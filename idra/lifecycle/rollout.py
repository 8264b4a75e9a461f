"""``idra rollout``: move the fleet onto a new launch template (new image, user-data or
agent) node by node, through drain, surge first and health-gated (ARCHITECTURE §5).

Each run looks, per region, at the stack's group and the control plane's records. Nodes
whose instance runs an older launch-template version than their group (or another agent
than ``--agent-version``) are outdated. Before an outdated node is drained, capacity is
added (desired + 1, within maxSize) and the run continues only once a node on the new
version has registered, passed readiness and is active; each later node is drained only
once the replacement of the previous one serves (serving nodes ≥ desired). A group at
maxSize, which cannot grow, drains one node at a time, its replacement being the proof.
A run stops — ``stop`` steps, exit 1, nothing drained in that region — when launches
failed (abandoned readiness hooks, failed launch activities) or a launched instance is
not active within ``--ready-within``. Never more than N nodes draining (default 10 %
of the pool, at least one), never below the region's minimum (or its last healthy node),
emptiest first. The reaper terminates each drained node when its users have left, and
the group launches its replacement from the current template. Idempotent; run it on a
schedule next to the reaper, or with ``--wait`` until the rollout is done.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from idra.cliutil import (
    BadInput,
    Column,
    Failed,
    Output,
    connection_options,
    cwd_option,
    make_api,
    output_options,
)
from idra.config import ConfigError, load_stack
from idra.lifecycle.api import ApiError, OperatorApi

HEALTHY_WITHIN_S = 120  # a node counts as healthy with a heartbeat this recent
READY_WITHIN_S = 1800  # a launched instance must be active by then (hook 900 s + boot)
VERSION_TAG = "aws:ec2launchtemplate:version"  # set by EC2 on every instance from a template
TEMPLATE_TAG = "aws:ec2launchtemplate:id"
FAILED_LAUNCH = ("Failed", "Cancelled")  # an abandoned readiness hook ends as Cancelled


@dataclass
class Step:
    node_id: str
    region: str
    action: str  # "drain", "hold", "surge" or "stop"
    why: str

    def as_dict(self) -> dict[str, str]:
        return vars(self).copy()


def budget(pool: int, max_draining: int | None, percent: float) -> int:
    """How many nodes may drain at once: a count, or a share of the pool (at least 1)."""
    if max_draining is not None:
        return max_draining
    return max(1, math.ceil(pool * percent / 100))


@dataclass
class GroupView:
    """One region's group as AWS shows it now."""

    desired: int
    min_size: int
    max_size: int
    states: dict[str, str]  # instance -> lifecycle state (members of the group only)
    launched: dict[str, float]  # instance -> launch time (epoch seconds)
    outdated: dict[str, str]  # instance -> why it is on an older template
    failures: list[str]  # recent failed or cancelled launches


class AwsTemplates:
    """The stack's groups seen through Auto Scaling and EC2. Only groups named in
    ``groups`` (region -> group name) are looked at."""

    def __init__(self, client: Callable[[str, str], Any], groups: dict[str, str]) -> None:
        self._client = client  # (service, region) -> boto3 client
        self._groups = groups

    def _group(self, region: str) -> dict[str, Any]:
        name = self._groups[region]
        found = self._client("autoscaling", region).describe_auto_scaling_groups(
            AutoScalingGroupNames=[name]
        )["AutoScalingGroups"]
        if not found:
            raise ApiError(f"{region}: no auto-scaling group {name}")
        return found[0]

    def current(self, region: str, group: dict[str, Any] | None = None) -> tuple[str, str]:
        """(template id, version number) the region's group launches from now."""
        group = group or self._group(region)
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

    def _instances(self, region: str, ids: Collection[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        if not ids:  # an empty id list would make EC2 list every instance of the region
            return found
        ec2 = self._client("ec2", region)
        for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=sorted(ids)):
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    found[instance["InstanceId"]] = instance
        return found

    def _why(self, instance: dict[str, Any], template_id: str, version: str) -> str | None:
        its = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        if its.get(TEMPLATE_TAG) != template_id:
            return "launched from another launch template"
        if its.get(VERSION_TAG) != version:
            return f"launch template v{its.get(VERSION_TAG)}, group on v{version}"
        return None

    def outdated(self, region: str, instance_ids: Collection[str]) -> dict[str, str]:
        """Instance id -> why it is outdated (instances of other groups: not listed)."""
        if not instance_ids or region not in self._groups:
            return {}
        template_id, version = self.current(region)
        ours = self._members(region, instance_ids)
        result = {}
        for instance_id, instance in self._instances(region, ours).items():
            why = self._why(instance, template_id, version)
            if why:
                result[instance_id] = why
        return result

    def view(self, region: str, now: float, window_s: float = READY_WITHIN_S) -> GroupView:
        """The group: capacity, members and their versions, launches failed lately."""
        group = self._group(region)
        template_id, version = self.current(region, group)
        states = {i["InstanceId"]: i["LifecycleState"] for i in group["Instances"]}
        instances = self._instances(region, states)
        outdated = {}
        for instance_id, instance in instances.items():
            why = self._why(instance, template_id, version)
            if why:
                outdated[instance_id] = why
        launched = {
            i: instance["LaunchTime"].timestamp()
            for i, instance in instances.items()
            if "LaunchTime" in instance
        }
        return GroupView(
            desired=group["DesiredCapacity"], min_size=group["MinSize"],
            max_size=group["MaxSize"], states=states, launched=launched, outdated=outdated,
            failures=self._failures(region, now - window_s),
        )  # fmt: skip

    def _failures(self, region: str, since: float) -> list[str]:
        client = self._client("autoscaling", region)
        found = client.describe_scaling_activities(
            AutoScalingGroupName=self._groups[region], MaxRecords=100
        )["Activities"]
        return [
            f"{a.get('Description', 'launch')}: {a.get('StatusMessage') or a['StatusCode']}"
            for a in found
            if a.get("StatusCode") in FAILED_LAUNCH
            and a.get("Description", "").startswith("Launching")
            and a["StartTime"].timestamp() >= since
        ]

    def surge(self, region: str, desired: int) -> None:
        """Ask the group for ``desired`` instances (one more than now)."""
        self._client("autoscaling", region).set_desired_capacity(
            AutoScalingGroupName=self._groups[region], DesiredCapacity=desired, HonorCooldown=False
        )

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


def is_fresh(node: dict[str, Any], now: float) -> bool:
    return now - float(node.get("last_heartbeat_at") or 0) < HEALTHY_WITHIN_S


def plan(
    active: list[dict[str, Any]],
    draining: list[dict[str, Any]],
    outdated: dict[str, str],
    limit: int,
    now: float,
) -> list[Step]:
    """Which outdated active nodes to drain now (node id -> why in ``outdated``)."""
    fresh = [n for n in active if is_fresh(n, now)]
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


def gate(
    view: GroupView,
    active: list[dict[str, Any]],
    draining: list[dict[str, Any]],
    outdated_ids: set[str],
    now: float,
    ready_within: float = READY_WITHIN_S,
) -> tuple[str, str]:
    """May one more outdated node of a region drain now? ("drain" | "hold" | "surge" |
    "stop", why), from its group and its records (active, outdated ones too; draining)."""
    if view.failures:
        return "stop", f"launches failed: {view.failures[0]}"
    by_instance = {n["instance_id"]: n for n in active}
    leaving = {n["instance_id"] for n in draining}
    serving = [
        i for i, state in view.states.items()
        if state == "InService" and i in by_instance and is_fresh(by_instance[i], now)
    ]  # fmt: skip
    launching = [
        i for i, state in view.states.items()
        if state.startswith("Pending")
        or (state == "InService" and i not in by_instance and i not in leaving)
    ]  # fmt: skip
    for instance_id in sorted(launching):
        age = now - view.launched.get(instance_id, now)
        if age > ready_within:
            return "stop", f"{instance_id} launched {age:.0f}s ago and is not active yet"
    if launching:
        return "hold", f"waiting for {len(launching)} launched node(s) to become active"
    new = [i for i in serving if by_instance[i]["id"] not in outdated_ids]
    if len(serving) < view.desired:
        return "hold", f"waiting for a replacement: {len(serving)} of {view.desired} serving"
    if not new and view.desired < view.max_size:
        return "surge", f"desired {view.desired} -> {view.desired + 1} for a new-version node"
    if len(serving) - 1 < max(view.min_size, 1):
        return "hold", f"{len(serving)} serving: draining one would go below the minimum"
    if new:
        return "drain", f"{len(new)} new-version node(s) serving"
    return "drain", f"group at maxSize {view.max_size}: one at a time"


def rollout(
    api: OperatorApi,
    templates: AwsTemplates | None,
    *,
    regions: Collection[str],
    max_draining: int | None = None,
    percent: float = 10,
    agent_version: str | None = None,
    ready_within: float = READY_WITHIN_S,
    dry_run: bool = False,
    now: float | None = None,
) -> list[Step]:
    """One pass: the region's gate, then up to the budget of outdated nodes drained
    (``outdated``); return the steps (``stop`` steps: the rollout must not go on)."""
    now = time.time() if now is None else now
    active = [n for n in api.nodes("active") if n.get("region") in regions]
    draining = [n for n in api.nodes("draining") if n.get("region") in regions]
    limit = budget(len(active) + len(draining), max_draining, percent)
    why: dict[str, str] = {}
    views: dict[str, GroupView] = {}
    for region in regions:
        here = {n["instance_id"]: n["id"] for n in active if n["region"] == region}
        if templates is not None and here:
            views[region] = templates.view(region, now, ready_within)
            for instance_id, reason in views[region].outdated.items():
                if instance_id in here:
                    why[here[instance_id]] = reason
    if agent_version:
        for node in active:
            if node.get("agent_version") != agent_version:
                why.setdefault(
                    node["id"], f"agent {node.get('agent_version')}, want {agent_version}"
                )
    steps = plan(active, draining, why, limit, now)
    gated: list[Step] = []
    for region, view in views.items():
        here = [n for n in active if n["region"] == region]
        if not any(n["id"] in why for n in here):
            continue
        wanted = [s for s in steps if s.region == region and s.action == "drain"]
        leaving = [n for n in draining if n["region"] == region]
        verdict, reason = gate(view, here, leaving, set(why), now, ready_within)
        if verdict == "surge" and not dry_run:
            templates.surge(region, view.desired + 1)
        for index, step in enumerate(wanted):
            if verdict == "drain" and index == 0:
                continue
            step.action = "hold"  # one node per region per pass, and only through the gate
            step.why = "one at a time per region" if verdict == "drain" else reason
        if verdict in ("surge", "stop"):
            gated.append(Step("-", region, verdict, reason))
    for step in steps:
        if step.action == "drain" and not dry_run:
            api.drain(step.node_id, "outdated")
    return gated + steps


def unfinished(
    api: OperatorApi, templates: AwsTemplates, regions: Collection[str], now: float
) -> list[str]:
    """What keeps the rollout from being done: members on an older template, or fewer
    serving nodes than desired (empty: every node new and serving)."""
    active = api.nodes("active")
    left = []
    for region in regions:
        view = templates.view(region, now)
        if view.outdated:
            left.append(f"{region}: {len(view.outdated)} instance(s) on an older template")
        by_instance = {n["instance_id"]: n for n in active if n.get("region") == region}
        serving = [
            i for i, state in view.states.items()
            if state == "InService" and i in by_instance and is_fresh(by_instance[i], now)
        ]  # fmt: skip
        if len(serving) < view.desired:
            left.append(f"{region}: {len(serving)} of {view.desired} serving")
    return left


def _parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+)([smh]?)", text.strip())
    if not match:
        raise BadInput(f"{text!r} is not a duration like 90s, 30m or 2h")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def stack_region_options(command: Callable) -> Callable:
    """``--stack`` and ``--region`` (repeatable), checked by :func:`stack_regions`."""
    stack = click.option("--stack", required=True,
                         help="Stack: its regions and groups (Pulumi.<stack>.yaml).")  # fmt: skip
    region = click.option("--region", "regions", multiple=True,
                          help="Only these regions of the stack.")  # fmt: skip
    return stack(region(command))


def stack_regions(stack: str, cwd, regions: Collection[str]):
    """The stack's config, once every ``--region`` given is one of its regions."""
    try:
        cfg = load_stack(stack, cwd.resolve())
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    for region in regions:
        if region not in cfg.regions:
            raise BadInput(f"--region: {region} is not a region of stack {stack}")
    return cfg


@click.command("rollout")
@connection_options
@output_options
@cwd_option
@stack_region_options
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
@click.option("--ready-within", default=f"{READY_WITHIN_S}s", show_default=True,
              help="A launched node must be active by then, or the rollout stops.")  # fmt: skip
@click.option("--wait", "wait_for", default=None, metavar="DURATION",
              help="Repeat passes (every --every) until no node is outdated; exit 1 if it "
              "stops or is not done by then.")  # fmt: skip
@click.option("--every", default="60s", show_default=True, help="Pause between --wait passes.")
@click.option("--dry-run", is_flag=True, help="Show what would be drained; change nothing.")
def rollout_command(api_url, operator_token_file, ca_file, out: Output, cwd, stack, regions,
                    max_draining, max_draining_percent, agent_version, ready_within, wait_for,
                    every, dry_run) -> None:  # fmt: skip
    """Replace nodes on an old launch template (or agent) through drain: surge first,
    health-gated, a bounded number at a time. Exit 1 when the rollout stopped (failed
    launches, a node not active in time) or --wait ran out."""
    cfg = stack_regions(stack, cwd, regions)
    ready_s = _parse_duration(ready_within)
    deadline = time.monotonic() + _parse_duration(wait_for) if wait_for else None
    pause = _parse_duration(every)
    regions = regions or tuple(cfg.regions)
    api = make_api(api_url, operator_token_file, ca_file)
    import boto3

    templates = AwsTemplates(
        lambda service, region: boto3.client(service, region_name=region),
        {region: cfg.asg_name(region) for region in regions},
    )
    while True:
        try:
            steps = rollout(api, templates, regions=regions, max_draining=max_draining,
                            percent=max_draining_percent, agent_version=agent_version,
                            ready_within=ready_s, dry_run=dry_run)  # fmt: skip
        except (ApiError, BotoCoreError, ClientError) as exc:
            raise Failed(str(exc)) from None
        report_steps(steps, out, dry_run)
        stopped = [s for s in steps if s.action == "stop"]
        if stopped:
            raise Failed(f"rollout stopped in {', '.join(sorted({s.region for s in stopped}))}: "
                         f"{stopped[0].why}; nothing more drained there")  # fmt: skip
        if deadline is None or dry_run:
            return
        try:
            left = unfinished(api, templates, regions, time.time())
        except (ApiError, BotoCoreError, ClientError) as exc:
            raise Failed(str(exc)) from None
        if not steps and not left:
            click.echo(f"rollout done: every node of {stack} on the new version and serving",
                       err=True)  # fmt: skip
            return
        if time.monotonic() + pause > deadline:
            raise Failed(f"--wait {wait_for}: rollout not done ({'; '.join(left) or 'steps open'})")
        time.sleep(pause)


STEP_COLUMNS = tuple(Column(key.replace("node_id", "node"), lambda s, k=key: s[k])
                     for key in ("node_id", "region", "action", "why"))  # fmt: skip


def report_steps(
    steps: list[Step], out: Output, dry_run: bool, title: str = "idra rollout"
) -> None:
    rows = [s.as_dict() for s in steps]
    if dry_run and not out.data:
        rows = [r | {"action": f"{r['action']} (dry run)"} for r in rows]
    out.print(title, STEP_COLUMNS, rows)
