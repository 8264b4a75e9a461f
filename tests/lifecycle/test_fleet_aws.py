"""The AWS fleet backend against moto (fixtures in conftest.py)."""

from __future__ import annotations

import boto3
import pytest

from idra.lifecycle.fleet import AwsFleet, NotOurs

from .conftest import GROUP, OTHER, REGION, STACK, instances


def test_terminate_replaces_without_decrementing(aws) -> None:
    victim, survivor = instances(aws)
    aws.stubber.add_response(
        "complete_lifecycle_action",
        {},
        {"LifecycleHookName": "drain", "AutoScalingGroupName": GROUP,
         "InstanceId": victim, "LifecycleActionResult": "CONTINUE"},
    )  # fmt: skip
    with aws.stubber:
        outcome = AwsFleet(lambda region: aws, STACK).terminate(
            {"id": "n1", "instance_id": victim, "region": REGION}
        )
    aws.stubber.assert_no_pending_responses()
    assert outcome == "terminated"
    after = instances(aws)
    assert victim not in after and survivor in after
    assert len(after) == 2, "the group launched a replacement"
    group = aws.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])
    assert group["AutoScalingGroups"][0]["DesiredCapacity"] == 2


def test_terminating_a_gone_instance_is_a_no_op(aws) -> None:
    victim = instances(aws)[0]
    aws.stubber.add_response("complete_lifecycle_action", {})
    fleet = AwsFleet(lambda region: aws, STACK)
    with aws.stubber:
        fleet.terminate({"id": "n1", "instance_id": victim, "region": REGION})
        assert fleet.terminate({"id": "n1", "instance_id": victim, "region": REGION}) == (
            "already gone"
        )
    assert len(instances(aws)) == 2


def test_lifecycle_already_completed_by_the_agent(aws) -> None:
    victim = instances(aws)[0]
    aws.stubber.add_client_error(
        "complete_lifecycle_action", "ValidationError", "No active Lifecycle Action found"
    )
    with aws.stubber:
        outcome = AwsFleet(lambda region: aws, STACK).terminate(
            {"id": "n1", "instance_id": victim, "region": REGION}
        )
    assert outcome == "terminated"


def _node(instance_id: str, region: str = REGION) -> dict:
    return {"id": "n1", "instance_id": instance_id, "region": region}


def test_only_the_stacks_own_tagged_instances_are_terminated(aws) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    own = instances(aws)[0]
    foreign = instances(aws, OTHER)[0]
    image = ec2.describe_images()["Images"][0]["ImageId"]
    loose = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    untagged = instances(aws)[1]
    ec2.delete_tags(Resources=[untagged], Tags=[{"Key": "environment"}])
    fleet = AwsFleet(lambda region: aws, STACK)
    assert fleet.check(_node(own)) is None
    assert fleet.check(_node(foreign)) == f"in group {OTHER}, not {GROUP}"
    assert fleet.check(_node(loose)) == f"not in any auto-scaling group (expected {GROUP})"
    assert fleet.check(_node(untagged)) == f"lacks the tags of stack {STACK}"
    other_stack = AwsFleet(lambda region: aws, "production").check(_node(own))
    assert other_stack == f"in group {GROUP}, not idra-production-{REGION}"
    for instance in (foreign, loose, untagged):
        with pytest.raises(NotOurs):
            fleet.terminate(_node(instance))
    running = ec2.describe_instances(InstanceIds=[foreign, loose, untagged])["Reservations"]
    assert {i["State"]["Name"] for r in running for i in r["Instances"]} == {"running"}
