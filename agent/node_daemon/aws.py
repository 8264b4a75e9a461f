"""AWS from the node: IMDSv2 metadata, the termination lifecycle hook, Secrets Manager."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import httpx

IMDS_URL = "http://169.254.169.254"


class Imds:
    """IMDSv2: a session token first (PUT), then metadata reads with it."""

    def __init__(self, url: str = IMDS_URL, timeout: float = 2) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout)
        self._token: str | None = None

    def get(self, path: str) -> str | None:
        """A metadata value, or None when the instance has no such item (404)."""
        return self.read(f"/latest/meta-data/{path}")

    def identity(self) -> dict[str, str]:
        """The instance identity document (exact text) and its base64 RSA-SHA256
        signature, as the control plane verifies them."""
        base = "/latest/dynamic/instance-identity"
        document, signature = self.read(f"{base}/document"), self.read(f"{base}/signature")
        if not document or not signature:
            raise RuntimeError("IMDS: no instance identity document")
        return {"document": document, "signature": signature}

    def read(self, path: str) -> str | None:
        """An IMDSv2 item by full path, or None when there is no such item (404)."""
        for _ in range(2):
            if self._token is None:
                reply = self._http.put(
                    "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
                )
                reply.raise_for_status()
                self._token = reply.text
            reply = self._http.get(path, headers={"X-aws-ec2-metadata-token": self._token})
            if reply.status_code == 401:  # token expired
                self._token = None
                continue
            if reply.status_code == 404:
                return None
            reply.raise_for_status()
            return reply.text
        return None

    def terminating(self) -> bool:
        """The auto-scaling group is terminating us, or a spot interruption is coming."""
        state = self.get("autoscaling/target-lifecycle-state")
        return state == "Terminated" or self.get("spot/instance-action") is not None


def complete_lifecycle_action(
    asg_name: str, hook: str, instance_id: str, region: str, client: Any = None
) -> None:
    """Let the auto-scaling group go on with our termination (CONTINUE)."""
    if client is None:
        import boto3

        client = boto3.client("autoscaling", region_name=region)
    client.complete_lifecycle_action(
        LifecycleHookName=hook,
        AutoScalingGroupName=asg_name,
        InstanceId=instance_id,
        LifecycleActionResult="CONTINUE",
    )


class SecretError(RuntimeError):
    pass


def fetch_secret(secret_id: str, region: str, out: Path, client: Any = None) -> None:
    """Write a Secrets Manager value to ``out`` (mode 0600 from the start, atomic)."""
    import botocore.exceptions

    if client is None:
        import boto3

        client = boto3.client("secretsmanager", region_name=region)
    try:
        value = client.get_secret_value(SecretId=secret_id)["SecretString"]
    except botocore.exceptions.ClientError as exc:
        code = exc.response["Error"]["Code"]
        raise SecretError(f"secret {secret_id} in {region}: {code}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise SecretError(f"secret {secret_id} in {region}: {type(exc).__name__}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)  # created 0600
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    Path(tmp).replace(out)
