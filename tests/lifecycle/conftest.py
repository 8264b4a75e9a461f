"""Auto Scaling in moto (autoscaling + ec2) for the fleet and reaper tests, plus the
termination lifecycle-hook states moto 5 lacks.

moto 5 terminates an instance at once, ignoring lifecycle hooks, and does not implement
``complete_lifecycle_action``. :class:`LifecycleStub` adds what AWS documents:

- Amazon EC2 Auto Scaling User Guide, "Amazon EC2 Auto Scaling instance lifecycle"
  (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-lifecycle.html):
  with a termination hook, an instance being terminated goes ``Terminating`` →
  ``Terminating:Wait`` and stays there until the hook is completed or times out, then
  ``Terminating:Proceed`` → ``Terminated``; its group still lists it meanwhile.
- User Guide, "Verify a scaling activity for an Auto Scaling group"
  (https://docs.aws.amazon.com/autoscaling/ec2/userguide/as-verify-scaling-activity.html):
  a launch whose readiness hook was abandoned (or timed out with ABANDON) is a
  "Launching a new EC2 instance" activity with status ``Cancelled``; moto 5 reports no
  activities at all, so tests add them to :attr:`LifecycleStub.activities`.
- API Reference, CompleteLifecycleAction
  (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_CompleteLifecycleAction.html):
  completing the action of an instance not in a wait state fails with ``ValidationError``
  ("No active Lifecycle Action found").

``complete_lifecycle_action`` itself goes to a client wrapped in botocore's Stubber, which
checks its parameters against the real API model (tests script its answer); when that
answer is a success, the instance moves on and moto terminates it.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from idra.lifecycle.fleet import TERMINATING

REGION = "eu-central-1"
STACK = "staging"
GROUP = f"idra-{STACK}-{REGION}"  # the stack's own group (infra names it so)
OTHER = "billing-workers"  # another team's group in the same account


class LifecycleStub:
    """The moto client, with termination hooks that hold instances as AWS does."""

    def __init__(self, moto_client) -> None:
        self._moto = moto_client
        self.stubbed = boto3.client("autoscaling", region_name=REGION)
        self.stubber = Stubber(self.stubbed)
        self.held: dict[str, dict] = {}  # instance -> {"group", "decrement", "polls"}
        self.settle_polls = 0  # describes showing "Terminating" before "Terminating:Wait"
        self.terminate_calls: list[tuple[str, bool]] = []
        self.activities: list[dict] = []  # launch activities AWS would report (moto: none)

    def __getattr__(self, name: str):
        return getattr(self._moto, name)

    def _hook(self, group: str) -> bool:
        hooks = self._moto.describe_lifecycle_hooks(AutoScalingGroupName=group)
        return any(h["LifecycleTransition"] == TERMINATING for h in hooks["LifecycleHooks"])

    def _state(self, instance_id: str) -> str:
        held = self.held[instance_id]
        if held["polls"] < self.settle_polls:
            held["polls"] += 1
            return "Terminating"
        return "Terminating:Wait"

    def terminate_instance_in_auto_scaling_group(self, **params):
        instance_id, decrement = params["InstanceId"], params["ShouldDecrementDesiredCapacity"]
        self.terminate_calls.append((instance_id, decrement))
        listed = self._moto.describe_auto_scaling_instances(InstanceIds=[instance_id])
        group = listed["AutoScalingInstances"][0]["AutoScalingGroupName"]
        if not self._hook(group):
            return self._moto.terminate_instance_in_auto_scaling_group(**params)
        self.held[instance_id] = {"group": group, "decrement": decrement, "polls": 0}
        return {"Activity": {"ActivityId": "held", "Description": "Terminating", "Progress": 0}}

    def describe_auto_scaling_instances(self, **params):
        found = self._moto.describe_auto_scaling_instances(**params)
        for entry in found["AutoScalingInstances"]:
            if entry["InstanceId"] in self.held:
                entry["LifecycleState"] = self._state(entry["InstanceId"])
        return found

    def describe_auto_scaling_groups(self, **params):
        found = self._moto.describe_auto_scaling_groups(**params)
        for group in found["AutoScalingGroups"]:
            for entry in group["Instances"]:
                if entry["InstanceId"] in self.held:
                    entry["LifecycleState"] = "Terminating:Wait"
        return found

    def describe_scaling_activities(self, **params):
        found = self._moto.describe_scaling_activities(**params)
        found["Activities"] += [
            a
            for a in self.activities
            if a["AutoScalingGroupName"] == params["AutoScalingGroupName"]
        ]
        return found

    def complete_lifecycle_action(self, **params):
        reply = self.stubbed.complete_lifecycle_action(**params)  # the scripted answer
        instance_id = params["InstanceId"]
        held = self.held.get(instance_id)
        if held is None or held["polls"] < self.settle_polls:
            message = f"No active Lifecycle Action found with instance ID {instance_id}"
            error = {"Error": {"Code": "ValidationError", "Message": message}}
            raise ClientError(error, "CompleteLifecycleAction")
        self.finish(instance_id)
        return reply

    def finish(self, instance_id: str) -> None:
        """The hook is completed (by the reaper, or by the node's own agent): Proceed."""
        held = self.held.pop(instance_id)
        self._moto.terminate_instance_in_auto_scaling_group(
            InstanceId=instance_id, ShouldDecrementDesiredCapacity=held["decrement"]
        )


@pytest.fixture
def aws(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        asg = boto3.client("autoscaling", region_name=REGION)
        image = ec2.describe_images()["Images"][0]["ImageId"]
        ec2.create_launch_template(LaunchTemplateName="node", LaunchTemplateData={"ImageId": image})
        tags = {"environment": STACK, "role": "exit-node", "project": "idra", "Name": GROUP}
        asg.create_auto_scaling_group(
            AutoScalingGroupName=GROUP,
            LaunchTemplate={"LaunchTemplateName": "node"},
            MinSize=1, MaxSize=4, DesiredCapacity=2,
            AvailabilityZones=[f"{REGION}a"],
            NewInstancesProtectedFromScaleIn=True,
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in tags.items()],
        )  # fmt: skip
        asg.put_lifecycle_hook(
            LifecycleHookName="drain", AutoScalingGroupName=GROUP,
            LifecycleTransition=TERMINATING, HeartbeatTimeout=3600, DefaultResult="CONTINUE",
        )  # fmt: skip
        asg.create_auto_scaling_group(
            AutoScalingGroupName=OTHER, LaunchTemplate={"LaunchTemplateName": "node"},
            MinSize=1, MaxSize=1, DesiredCapacity=1, AvailabilityZones=[f"{REGION}a"],
        )  # fmt: skip
        yield LifecycleStub(asg)


def instances(client, group: str = GROUP) -> list[str]:
    found = client.describe_auto_scaling_groups(AutoScalingGroupNames=[group])
    return [i["InstanceId"] for i in found["AutoScalingGroups"][0]["Instances"]]
