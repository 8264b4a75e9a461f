"""The fleet shrinks through drain: target tracking lowers desired capacity, protected
instances stay, ``idra scale-in`` drains the emptiest and the reaper terminates it once
empty without a replacement (moto's Auto Scaling and EC2, the real control plane)."""

from __future__ import annotations

import datetime as dt
import json

import boto3
from click.testing import CliRunner

from idra.cli import main
from idra.lifecycle.api import OperatorApi
from idra.lifecycle.fleet import AwsFleet
from idra.lifecycle.reaper import reap
from idra.lifecycle.rollout import AwsTemplates
from idra.lifecycle.scale_in import scale_in

from .conftest import GROUP, REGION, STACK, instances


def _setup(cp, aws, peers: list[int], min_size: int = 1):
    aws.update_auto_scaling_group(
        AutoScalingGroupName=GROUP, MinSize=min_size, MaxSize=4, DesiredCapacity=len(peers)
    )
    nodes = {}
    for instance, count in zip(sorted(instances(aws)), peers, strict=True):
        nodes[instance] = cp.register(instance, region=REGION)
        cp.heartbeat(nodes[instance], active_peers=count)
    ec2 = boto3.client("ec2", region_name=REGION)
    templates = AwsTemplates(
        lambda service, region: aws if service == "autoscaling" else ec2, {REGION: GROUP}
    )
    return nodes, templates, OperatorApi(cp.url, cp.tokens["operator"])


def _group(aws) -> dict:
    return aws.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0]


def test_excess_is_drained_emptiest_first_and_leaves_without_replacement(cp, aws) -> None:
    nodes, templates, api = _setup(cp, aws, [3, 0, 2])
    emptiest = next(i for i, n in nodes.items() if api.node(n)["active_peers"] == 0)
    assert scale_in(api, templates, regions=[REGION]) == [], "nothing in excess"
    # What target tracking does at low load: desired 3 -> 2. Every instance is protected
    # from scale-in, so AWS terminates none (moto honours the protection too).
    aws.set_desired_capacity(AutoScalingGroupName=GROUP, DesiredCapacity=2)
    assert len(instances(aws)) == 3
    (step,) = scale_in(api, templates, regions=[REGION])
    assert (step.node_id, step.action) == (nodes[emptiest], "drain")
    (drained,) = api.nodes("draining")
    assert (drained["id"], drained["drain_reason"]) == (nodes[emptiest], "scale_in")
    assert scale_in(api, templates, regions=[REGION]) == [], "one excess node, one drain"

    aws.stubber.add_response("complete_lifecycle_action", {})
    with aws.stubber:
        (decision,) = reap(api, AwsFleet(lambda r: aws, STACK), dt.timedelta(hours=6))
    assert (decision.action, decision.outcome) == ("terminate", "terminated")
    assert aws.terminate_calls == [(emptiest, False)], "desired was lowered by AWS already"
    assert sorted(instances(aws)) == sorted(set(nodes) - {emptiest}), "no replacement"
    assert _group(aws)["DesiredCapacity"] == 2
    assert scale_in(api, templates, regions=[REGION]) == []


def test_never_the_last_node_of_a_region(cp, aws) -> None:
    """A group allowed to shrink to zero (minSize 0): one node drains, the last stays."""
    _, templates, api = _setup(cp, aws, [0, 0], min_size=0)
    aws.set_desired_capacity(AutoScalingGroupName=GROUP, DesiredCapacity=0)
    assert [s.action for s in scale_in(api, templates, regions=[REGION])] == ["drain"]
    (step,) = scale_in(api, templates, regions=[REGION])
    assert step.action == "hold" and "floor 1" in step.why
    assert len(api.nodes("draining")) == 1 and len(api.nodes("active")) == 1


def test_scale_in_command_on_the_stacks_group(cp, aws) -> None:
    _, _, api = _setup(cp, aws, [1, 0, 4])
    aws.set_desired_capacity(AutoScalingGroupName=GROUP, DesiredCapacity=2)
    args = ["scale-in", "--api-url", cp.url, "--stack", "staging", "--json",
            "--operator-token-file", str(cp.log.parent / "operator.token")]  # fmt: skip
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert [s["action"] for s in json.loads(dry.output)] == ["drain"]
    assert api.nodes("draining") == []
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [n["drain_reason"] for n in api.nodes("draining")] == ["scale_in"]
