"""Auto Scaling in moto (autoscaling + ec2) for the fleet and reaper tests.

moto 5 does not implement ``complete_lifecycle_action``: that one call goes to a client
wrapped in botocore's Stubber, which checks its parameters against the real API model.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from idra.lifecycle.fleet import TERMINATING

REGION = "eu-central-1"
STACK = "staging"
GROUP = f"idra-{STACK}-{REGION}"  # the stack's own group (infra names it so)
OTHER = "billing-workers"  # another team's group in the same account


class LifecycleStub:
    """The moto client for everything but ``complete_lifecycle_action``."""

    def __init__(self, moto_client) -> None:
        self._moto = moto_client
        self.stubbed = boto3.client("autoscaling", region_name=REGION)
        self.stubber = Stubber(self.stubbed)
        self.complete_lifecycle_action = self.stubbed.complete_lifecycle_action

    def __getattr__(self, name: str):
        return getattr(self._moto, name)


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
