"""Fleet backends: how the reaper terminates a node so that a fresh one replaces it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from botocore.exceptions import ClientError

TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"


class Fleet(Protocol):
    def terminate(self, node: dict[str, Any]) -> str:
        """Terminate ``node``'s instance (idempotent); return what happened."""
        ...


class AwsFleet:
    """Auto Scaling: terminate without decrementing desired capacity, so the group
    launches a replacement (new instance, new address, new key), then complete the
    termination lifecycle hook (the node is already drained)."""

    def __init__(self, client_for_region: Callable[[str], Any]) -> None:
        self._client_for_region = client_for_region

    def terminate(self, node: dict[str, Any]) -> str:
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
