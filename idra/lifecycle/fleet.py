"""Fleet backends: how the reaper terminates a node so that a fresh one replaces it,
and how it first makes sure the instance really is one of the stack's own."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import ClientError

TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
HOOK_WAIT = "Terminating:Wait"  # held by the termination hook until completed
HOOK_WAIT_S = 60.0  # how long one pass waits for an instance to reach HOOK_WAIT
POLL_S = 2.0
ROLE_TAGS = {"role": "exit-node", "project": "idra"}  # with environment=<stack> (infra tags)


class Fleet(Protocol):
    def check(self, node: dict[str, Any]) -> str | None:
        """Why ``node``'s instance must not be terminated by us, or None (read-only)."""
        ...

    def terminate(self, node: dict[str, Any]) -> str:
        """Terminate ``node``'s instance (idempotent); return what happened: starting with
        ``terminated`` or ``already gone`` once the instance is gone (the record may go),
        anything else while it is still on its way out (the record stays; retried)."""
        ...


def is_gone(outcome: str) -> bool:
    """The fleet's outcome says the instance is gone: its record may be deleted."""
    return outcome.startswith(("terminated", "already gone"))


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
    if instance["State"]["Name"] == "shutting-down":  # on its way out: nothing left to do
        return Membership(None, state="shutting-down")
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
    """Auto Scaling: terminate without decrementing desired capacity (a replacement, with
    a new address and key, follows; for a ``scale_in`` drain target tracking has already
    lowered desired capacity, so none does), wait (bounded) until the instance is held in
    ``Terminating:Wait`` by the termination hook, then complete the hook at once — the
    node is drained, and a compromised node's own lifecycle heartbeats must not keep it
    alive. The instance is reported gone only once AWS shows it terminated; until then
    each later pass picks up where this one stopped. Before anything, the instance must be
    in the stack's own group ``idra-<stack>-<region>`` with the stack's tags."""

    def __init__(
        self,
        client_for_region: Callable[[str], Any],
        stack: str,
        ec2_for_region: Callable[[str], Any] | None = None,
        *,
        hook_wait_s: float = HOOK_WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client_for_region, self.stack = client_for_region, stack
        self._ec2_for_region = ec2_for_region or _boto3_ec2
        self.hook_wait_s, self._sleep = hook_wait_s, sleep

    def _membership(self, node: dict[str, Any]) -> Membership:
        region = node["region"]
        return membership(
            self._client_for_region(region), self._ec2_for_region(region),
            node["instance_id"], self.stack, region,
        )  # fmt: skip

    def check(self, node: dict[str, Any]) -> str | None:
        return self._membership(node).problem

    def terminate(self, node: dict[str, Any]) -> str:
        seen = self._membership(node)
        if seen.problem:
            raise NotOurs(seen.problem)
        if seen.gone:
            return "already gone"
        client = self._client_for_region(node["region"])
        instance_id = node["instance_id"]
        state = self._lifecycle_state(client, instance_id)
        if state is None:
            return f"terminating (EC2 {seen.state}); record kept until it is terminated"
        if not state.startswith("Terminat"):
            client.terminate_instance_in_auto_scaling_group(
                InstanceId=instance_id, ShouldDecrementDesiredCapacity=False
            )
        state = self._await_hook(client, instance_id)
        if state == HOOK_WAIT:
            group = group_name(self.stack, node["region"])
            hooks = client.describe_lifecycle_hooks(AutoScalingGroupName=group)["LifecycleHooks"]
            for hook in hooks:
                if hook["LifecycleTransition"] == TERMINATING:
                    self._complete(client, hook["LifecycleHookName"], group, instance_id)
            state = self._lifecycle_state(client, instance_id)
        if state is None and self._membership(node).gone:
            return "terminated"
        return f"terminating ({state or 'leaving'}); record kept until it is terminated"

    @staticmethod
    def _lifecycle_state(client: Any, instance_id: str) -> str | None:
        """The instance's state in its group, or None when no group lists it any more."""
        found = client.describe_auto_scaling_instances(InstanceIds=[instance_id])
        listed = found["AutoScalingInstances"]
        return listed[0]["LifecycleState"] if listed else None

    def _await_hook(self, client: Any, instance_id: str) -> str | None:
        """Poll until the instance is held in ``Terminating:Wait`` (or past it), at most
        ``hook_wait_s``; return its last state."""
        waited = 0.0
        while True:
            state = self._lifecycle_state(client, instance_id)
            if state in (None, HOOK_WAIT, "Terminating:Proceed", "Terminated"):
                return state
            if waited >= self.hook_wait_s:
                return state
            self._sleep(POLL_S)
            waited += POLL_S

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
