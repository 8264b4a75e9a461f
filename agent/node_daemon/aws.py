"""AWS from the node: IMDSv2 metadata, the launch and termination lifecycle hooks, Secrets
Manager."""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node_daemon.bounded import BoundedClient, Fault

IMDS_URL = "http://169.254.169.254"
IMDS_MAX_BYTES = 64 << 10


class Imds:
    """IMDSv2: a session token first (PUT), then metadata reads with it. Each call ends
    within ``deadline`` seconds; any failure is a :class:`Fault` (``imds``)."""

    def __init__(self, url: str = IMDS_URL, timeout: float = 2, deadline: float = 3) -> None:
        self._http = BoundedClient(
            "imds", url, timeout=timeout, deadline=deadline, max_bytes=IMDS_MAX_BYTES
        )
        self._token: str | None = None

    def _text(self, body: bytes, what: str) -> str:
        try:
            return body.decode("ascii")
        except UnicodeDecodeError:
            raise Fault("imds", "malformed", what) from None

    def get(self, path: str) -> str | None:
        """A metadata value, or None when the instance has no such item (404)."""
        return self.read(f"/latest/meta-data/{path}")

    def identity(self) -> dict[str, str]:
        """The instance identity document (exact text) and its base64 RSA-SHA256
        signature, as the control plane verifies them."""
        base = "/latest/dynamic/instance-identity"
        document, signature = self.read(f"{base}/document"), self.read(f"{base}/signature")
        if not document or not signature:
            raise Fault("imds", "malformed", "no instance identity document")
        return {"document": document, "signature": signature}

    def read(self, path: str) -> str | None:
        """An IMDSv2 item by full path, or None when there is no such item (404)."""
        for _ in range(2):
            if self._token is None:
                reply = self._http.request(
                    "PUT",
                    "/latest/api/token",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
                )
                token = self._text(reply.body, "token").strip()
                if reply.status != 200 or not token or not token.isprintable():
                    raise Fault("imds", _kind(reply.status), f"token: HTTP {reply.status}")
                self._token = token
            reply = self._http.request(
                "GET", path, headers={"X-aws-ec2-metadata-token": self._token}
            )
            if reply.status == 401:  # token expired
                self._token = None
                continue
            if reply.status == 404:
                return None
            if reply.status != 200:
                raise Fault("imds", _kind(reply.status), f"{path}: HTTP {reply.status}")
            return self._text(reply.body, path)
        raise Fault("imds", "refused", f"{path}: token refused")

    def terminating(self) -> bool:
        """The auto-scaling group is terminating us, or a spot interruption is coming.
        Values of the wrong form (a captive page, say) are faults, never a notice."""
        state = self.get("autoscaling/target-lifecycle-state")
        if state is not None and not re.fullmatch(r"[A-Za-z:]{1,64}", state):
            raise Fault("imds", "malformed", "target-lifecycle-state")
        if state == "Terminated":
            return True
        notice = self.get("spot/instance-action")
        if notice is None:
            return False
        try:
            action = json.loads(notice).get("action")
        except (ValueError, AttributeError, RecursionError):
            action = None
        if action not in ("terminate", "stop", "hibernate"):
            raise Fault("imds", "malformed", "spot/instance-action")
        return True


def _kind(status: int) -> str:
    if 300 <= status < 400:
        return "redirect"
    if status == 429:
        return "throttled"
    return "http_5xx" if status >= 500 else "http_4xx"


def aws_config() -> Any:
    """Bounded AWS calls: short timeouts, few retries (botocore has no overall deadline)."""
    from botocore.config import Config

    return Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3})


def _autoscaling(region: str, client: Any) -> Any:
    if client is None:
        import boto3

        client = boto3.client("autoscaling", region_name=region, config=aws_config())
    return client


def complete_lifecycle_action(
    asg_name: str, hook: str, instance_id: str, region: str, client: Any = None
) -> None:
    """Let the auto-scaling group go on with our launch or termination (CONTINUE)."""
    _autoscaling(region, client).complete_lifecycle_action(
        LifecycleHookName=hook,
        AutoScalingGroupName=asg_name,
        InstanceId=instance_id,
        LifecycleActionResult="CONTINUE",
    )


def record_lifecycle_heartbeat(
    asg_name: str, hook: str, instance_id: str, region: str, client: Any = None
) -> None:
    """Restart the hook's timeout: a drain may last longer than one heartbeat timeout."""
    _autoscaling(region, client).record_lifecycle_action_heartbeat(
        LifecycleHookName=hook, AutoScalingGroupName=asg_name, InstanceId=instance_id
    )


def no_active_action(exc: Exception) -> bool:
    """AWS's answer when there is no pending action for us (done, timed out, or none)."""
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code") == "ValidationError"


class SecretError(RuntimeError):
    pass


def fetch_secret_with_retries(
    secret_id: str,
    region: str,
    out: Path,
    attempts: int,
    client: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    warn: Callable[[str], None] = lambda line: None,
) -> None:
    """:func:`fetch_secret`, retried with exponential backoff and jitter (1 s, 2 s, 4 s …
    at most 30 s): at boot the network, IMDS credentials or a fresh IAM policy may not be
    there yet. Raises the last :class:`SecretError` after ``attempts`` tries."""
    for attempt in range(1, attempts + 1):
        try:
            fetch_secret(secret_id, region, out, client)
            return
        except SecretError as exc:
            if attempt == attempts:
                raise
            delay = random.uniform(0.5, 1.0) * min(30.0, 2.0 ** (attempt - 1))  # noqa: S311
            warn(f"{exc}; attempt {attempt}/{attempts}, retry in {delay:.0f} s")
            sleep(delay)


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


def aws_fault(exc: Exception, call: str) -> Fault:
    """A botocore error as a counted fault (the error code only, never a value)."""
    code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))
    if code:
        return Fault("aws", "throttled" if "Throttl" in code else "refused", f"{call}: {code}")
    return Fault("aws", "transport", f"{call}: {type(exc).__name__}")
