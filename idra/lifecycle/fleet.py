"""Fleet backends: how the reaper terminates a node so that a fresh one replaces it,
and how it first makes sure the instance really is one of the stack's own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import ClientError

TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
ROLE_TAGS = {"role": "exit-node", "project": "idra"}  # with environment=<stack> (infra tags)


class Fleet(Protocol):
    def check(self, node: dict[str, Any]) -> str | None:
        """Why ``node``'s instance must not be terminated by us, or None (read-only)."""
        ...

    def terminate(self, node: dict[str, Any]) -> str:
        """Terminate ``node``'s instance (idempotent); return what happened."""
        ...


def group_name(stack: str, region: str) -> str:
    return f"idra-{stack}-{region}"


@dataclass
class Membership:
    """What AWS says about an instance, seen from one stack."""

    problem: str | None  # why it is not the stack's own exit node; None: it is (or gone)
    gone: bool = False
    lifecycle_state: str = ""
    state: str = ""
    public_ips: set[str] = field(default_factory=set)


def membership(autoscaling: Any, ec2: Any, instance_id: str, stack: str, region: str) -> Membership:
    """Is ``instance_id`` in ``idra-<stack>-<region>`` and tagged as the stack's exit node?
    ClientErrors other than "no such instance" propagate."""
    expected = group_name(stack, region)
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "InvalidInstanceID.NotFound":
            return Membership(None, gone=True)
        raise
    found = [i for r in reservations for i in r["Instances"]]
    if not found or found[0]["State"]["Name"] == "terminated":
        return Membership(None, gone=True)
    instance = found[0]
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    ips = {instance.get("PublicIpAddress", "")} | {
        a["Ipv6Address"] for eni in instance.get("NetworkInterfaces", [])
        for a in eni.get("Ipv6Addresses", [])
    }  # fmt: skip
    seen = Membership(None, state=instance["State"]["Name"], public_ips=ips - {""})
    groups = autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])
    in_group = groups["AutoScalingInstances"]
    if not in_group:
        seen.problem = f"not in any auto-scaling group (expected {expected})"
    elif in_group[0]["AutoScalingGroupName"] != expected:
        seen.problem = f"in group {in_group[0]['AutoScalingGroupName']}, not {expected}"
    elif {**ROLE_TAGS, "environment": stack}.items() - tags.items():
        seen.problem = f"lacks the tags of stack {stack}"
    else:
        seen.lifecycle_state = in_group[0]["LifecycleState"]
    return seen


class AwsFleet:
    """Auto Scaling: terminate without decrementing desired capacity, so the group
    launches a replacement (new instance, new address, new key), then complete the
    termination lifecycle hook (the node is already drained). Before that, the instance
    must be in the stack's own group ``idra-<stack>-<region>`` with the stack's tags."""

    def __init__(
        self,
        client_for_region: Callable[[str], Any],
        stack: str,
        ec2_for_region: Callable[[str], Any] | None = None,
    ) -> None:
        self._client_for_region, self.stack = client_for_region, stack
        self._ec2_for_region = ec2_for_region or _boto3_ec2

    def check(self, node: dict[str, Any]) -> str | None:
        region = node["region"]
        return membership(
            self._client_for_region(region), self._ec2_for_region(region),
            node["instance_id"], self.stack, region,
        ).problem  # fmt: skip

    def terminate(self, node: dict[str, Any]) -> str:
        problem = self.check(node)
        if problem:
            raise NotOurs(problem)
        client = self._client_for_region(node["region"])
        instance_id = node["instance_id"]
        found = client.describe_auto_scaling_instances(InstanceIds=[instance_id])
        if not found["AutoScalingInstances"]:
            return "already gone"
        instance = found["AutoScalingInstances"][0]
        group = instance["AutoScalingGroupName"]
        if not instance["LifecycleState"].startswith("Terminat"):
            client.terminate_instance_in_auto_scaling_group(
                InstanceId=instance_id, ShouldDecrementDesiredCapacity=False
            )
        hooks = client.describe_lifecycle_hooks(AutoScalingGroupName=group)["LifecycleHooks"]
        for hook in hooks:
            if hook["LifecycleTransition"] == TERMINATING:
                self._complete(client, hook["LifecycleHookName"], group, instance_id)
        return "terminated"

    @staticmethod
    def _complete(client: Any, hook: str, group: str, instance_id: str) -> None:
        try:
            client.complete_lifecycle_action(
                LifecycleHookName=hook,
                AutoScalingGroupName=group,
                InstanceId=instance_id,
                LifecycleActionResult="CONTINUE",
            )
        except ClientError as exc:  # the agent completed it first, or it timed out
            if exc.response["Error"]["Code"] != "ValidationError":
                raise


class NotOurs(RuntimeError):
    """The instance is not the stack's own exit node: never terminated."""


def _boto3_ec2(region: str) -> Any:
    import boto3

    return boto3.client("ec2", region_name=region)
