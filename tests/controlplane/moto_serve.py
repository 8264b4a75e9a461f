"""``idra`` with boto3 answered by moto in this process (tests only): the way to run the
real ``idra controlplane serve --verify-with-aws`` against a fake AWS in a subprocess.

Before the CLI runs, it makes the stack's auto-scaling group ``idra-<stack>-<region>``
(tagged as infra tags it, ``MOTO_OWN`` instances) and another team's (one instance), and
writes them as JSON to ``$MOTO_INSTANCES``: ``{"own": [[id, ip], …], "other": [[id, ip]]}``.
Then every AWS API call the CLI makes is appended to ``$MOTO_CALLS``, one line each.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import boto3
from moto import mock_aws

from idra.cli import main

STACK, REGION = os.environ.get("MOTO_STACK", "staging"), "eu-central-1"
TAGS = {"environment": STACK, "role": "exit-node", "project": "idra"}


def make_groups(own: int) -> dict[str, list[list[str]]]:
    ec2 = boto3.client("ec2", region_name=REGION)
    asg = boto3.client("autoscaling", region_name=REGION)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName="node", LaunchTemplateData={"ImageId": image})
    found = {}
    for name, size, tags in ((f"idra-{STACK}-{REGION}", own, TAGS), ("other-team", 1, {})):
        asg.create_auto_scaling_group(
            AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": "node"},
            MinSize=size, MaxSize=size, DesiredCapacity=size, AvailabilityZones=[f"{REGION}a"],
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in tags.items()],
        )  # fmt: skip
        group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        ids = [i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"]]
        reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
        found["own" if tags else "other"] = [
            [i["InstanceId"], i["PublicIpAddress"]] for r in reservations for i in r["Instances"]
        ]
    return found


def count_calls(path: str) -> None:
    """Every later client of the default session appends the operation it calls."""
    lock = threading.Lock()

    def record(model, **_) -> None:
        with lock, Path(path).open("a") as calls:
            calls.write(f"{model.name}\n")

    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register("before-call", record)


if __name__ == "__main__":
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    with mock_aws():
        instances = make_groups(int(os.environ.get("MOTO_OWN", "2")))
        Path(os.environ["MOTO_INSTANCES"]).write_text(json.dumps(instances))
        count_calls(os.environ["MOTO_CALLS"])
        main(sys.argv[1:], prog_name="idra")
