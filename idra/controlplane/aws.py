"""``--verify-with-aws``: before a new instance joins, the AWS API must confirm it runs
in the stack's auto-scaling group ``idra-<stack>-<region>`` with the stack's tags, and
that the ``public_ip`` it reports is its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from idra.controlplane.app import AwsUnavailable
from idra.controlplane.identity import Identity
from idra.lifecycle.fleet import membership

JOINING = {"Pending", "Pending:Wait", "Pending:Proceed", "InService"}


class AwsConfirm:
    def __init__(self, stack: str, client: Callable[[str, str], Any] | None = None) -> None:
        self.stack = stack
        self._client = client or _boto3_client

    def __call__(self, identity: Identity, public_ip: str) -> str | None:
        """Why the instance may not join, or None."""
        region = identity.region
        try:
            seen = membership(
                self._client("autoscaling", region), self._client("ec2", region),
                identity.instance_id, self.stack, region,
            )  # fmt: skip
        except (BotoCoreError, ClientError) as exc:
            raise AwsUnavailable(type(exc).__name__) from None
        if seen.gone or seen.state not in ("pending", "running"):
            return "instance not running"
        if seen.problem:
            return seen.problem
        if seen.lifecycle_state not in JOINING:
            return f"instance is {seen.lifecycle_state}"
        if public_ip not in seen.public_ips:
            return "public_ip is not the instance's"
        return None


def _boto3_client(service: str, region: str) -> Any:
    import boto3

    return boto3.client(service, region_name=region)
