"""The AWS fleet backend against moto (fixtures in conftest.py)."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from idra.lifecycle.fleet import AwsFleet, NotOurs, is_gone

from .conftest import GROUP, OTHER, REGION, STACK, instances


def _node(instance_id: str, region: str = REGION) -> dict:
    return {"id": "n1", "instance_id": instance_id, "region": region}


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


def _expect_completion(aws, instance: str) -> None:
    aws.stubber.add_response(
        "complete_lifecycle_action",
        {},
        {"LifecycleHookName": "drain", "AutoScalingGroupName": GROUP,
         "InstanceId": instance, "LifecycleActionResult": "CONTINUE"},
    )  # fmt: skip


def test_waits_for_terminating_wait_then_completes_the_hook(aws) -> None:
    """AWS moves the instance to Terminating:Wait a little after the call: the fleet polls
    (bounded), and completes the hook only once it is held there."""
    victim = instances(aws)[0]
    aws.settle_polls = 3
    naps: list[float] = []
    _expect_completion(aws, victim)
    with aws.stubber:
        outcome = AwsFleet(lambda region: aws, STACK, sleep=naps.append).terminate(_node(victim))
    aws.stubber.assert_no_pending_responses()
    assert outcome == "terminated"
    assert len(naps) == 3 and aws.terminate_calls == [(victim, False)]
    assert victim not in instances(aws)


def test_not_yet_held_within_the_bound_keeps_the_record_for_the_next_pass(aws) -> None:
    """No completion before Terminating:Wait (AWS would refuse it, and the old code then
    forgot the node); the next pass neither terminates again nor skips the hook."""
    victim = instances(aws)[0]
    aws.settle_polls = 10
    fleet = AwsFleet(lambda region: aws, STACK, hook_wait_s=4, sleep=lambda _: None)
    with aws.stubber:  # nothing scripted: any completion here would fail the test
        first = fleet.terminate(_node(victim))
    assert first == "terminating (Terminating); record kept until it is terminated"
    assert not is_gone(first)
    assert victim in instances(aws)
    aws.settle_polls = 0
    _expect_completion(aws, victim)
    with aws.stubber:
        second = fleet.terminate(_node(victim))
    aws.stubber.assert_no_pending_responses()
    assert second == "terminated" and is_gone(second)
    assert aws.terminate_calls == [(victim, False)], "terminated once, completed later"


def test_hook_completed_by_the_agent_first_is_picked_up_later(aws) -> None:
    """The agent won the race: AWS answers ValidationError, which is no error; the record
    stays until AWS shows the instance gone, and the next pass forgets it."""
    victim = instances(aws)[0]
    fleet = AwsFleet(lambda region: aws, STACK)
    aws.stubber.add_client_error(
        "complete_lifecycle_action", "ValidationError", "No active Lifecycle Action found"
    )
    with aws.stubber:
        first = fleet.terminate(_node(victim))
    assert first == "terminating (Terminating:Wait); record kept until it is terminated"
    aws.finish(victim)  # the agent's own completion takes effect
    assert fleet.terminate(_node(victim)) == "already gone"


def test_other_errors_of_the_completion_propagate(aws) -> None:
    victim = instances(aws)[0]
    aws.stubber.add_client_error("complete_lifecycle_action", "Throttling", "Rate exceeded")
    with aws.stubber, pytest.raises(ClientError, match="Throttling"):
        AwsFleet(lambda region: aws, STACK).terminate(_node(victim))


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
