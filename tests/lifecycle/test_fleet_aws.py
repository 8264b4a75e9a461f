"""The AWS fleet backend against moto (fixtures in conftest.py)."""

from __future__ import annotations

from idra.lifecycle.fleet import AwsFleet

from .conftest import REGION, instances


def test_terminate_replaces_without_decrementing(aws) -> None:
    victim, survivor = instances(aws)
    aws.stubber.add_response(
        "complete_lifecycle_action",
        {},
        {"LifecycleHookName": "drain", "AutoScalingGroupName": "idra-staging",
         "InstanceId": victim, "LifecycleActionResult": "CONTINUE"},
    )  # fmt: skip
    with aws.stubber:
        outcome = AwsFleet(lambda region: aws).terminate(
            {"id": "n1", "instance_id": victim, "region": REGION}
        )
    aws.stubber.assert_no_pending_responses()
    assert outcome == "terminated"
    after = instances(aws)
    assert victim not in after and survivor in after
    assert len(after) == 2, "the group launched a replacement"
    group = aws.describe_auto_scaling_groups(AutoScalingGroupNames=["idra-staging"])
    assert group["AutoScalingGroups"][0]["DesiredCapacity"] == 2


def test_terminating_a_gone_instance_is_a_no_op(aws) -> None:
    victim = instances(aws)[0]
    aws.stubber.add_response("complete_lifecycle_action", {})
    fleet = AwsFleet(lambda region: aws)
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
        outcome = AwsFleet(lambda region: aws).terminate(
            {"id": "n1", "instance_id": victim, "region": REGION}
        )
    assert outcome == "terminated"
