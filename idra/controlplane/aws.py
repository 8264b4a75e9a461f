"""``--verify-with-aws``: before a new instance joins (and when a bound node reports
another ``public_ip``), the AWS API must confirm it runs in the stack's auto-scaling
group ``idra-<stack>-<region>`` with the stack's tags, and that the ``public_ip`` it
reports is its own.

Each check costs two AWS calls (``DescribeInstances``, ``DescribeAutoScalingInstances``),
so answers are cached per instance (for the address it reported: an admission for
``POSITIVE_TTL_S``, a refusal for ``NEGATIVE_TTL_S``), and checks are rate-limited per
instance and in total: a replayed document can neither cost the account its API quota
(which the reaper needs too) nor outpace the limits. Beyond a limit the registration is
503 (the agent retries).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from idra.controlplane.app import AwsUnavailable
from idra.controlplane.identity import Identity
from idra.lifecycle.fleet import membership

JOINING = {"Pending", "Pending:Wait", "Pending:Proceed", "InService"}
POSITIVE_TTL_S = 300.0  # an admitted instance and address are not asked again for 5 min
NEGATIVE_TTL_S = 30.0  # a refusal is remembered briefly (a fixed tag is seen soon)
PER_INSTANCE = (3, 1 / 10)  # (burst, checks per second): 3 at once, then one per 10 s
TOTAL = (20, 5.0)  # the whole process: 20 at once, then 5 checks (10 calls) per second
MAX_REMEMBERED = 10_000  # instances; past this, expired entries are forgotten


@dataclass
class Bucket:
    """A token bucket: ``burst`` takes at once, refilled at ``rate`` per second."""

    burst: float
    rate: float
    tokens: float = -1.0  # -1: full
    at: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens = self.burst
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class _Seen:
    """What AWS last said about one instance."""

    bucket: Bucket
    public_ip: str = ""
    answer: str | None = None
    until: float = 0.0  # the answer holds for public_ip until then


@dataclass
class AwsConfirm:
    stack: str
    client: Callable[[str, str], Any] | None = None  # (service, region) → boto3 client
    clock: Callable[[], float] = time.monotonic
    per_instance: tuple[float, float] = PER_INSTANCE
    total: tuple[float, float] = TOTAL
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._total = Bucket(*self.total)
        self._clients: dict[tuple[str, str], Any] = {}  # made once, under the lock

    def _client(self, service: str, region: str) -> Any:
        with self._lock:
            if (service, region) not in self._clients:
                make = self.client or _boto3_client
                self._clients[service, region] = make(service, region)
            return self._clients[service, region]

    def __call__(self, identity: Identity, public_ip: str) -> str | None:
        """Why the instance may not join, or None; :class:`AwsUnavailable` when AWS
        cannot be asked (API error, or a rate limit reached)."""
        instance_id, now = identity.instance_id, self.clock()
        with self._lock:
            seen = self._seen.get(instance_id)
            if seen and seen.public_ip == public_ip and now < seen.until:
                return seen.answer
            if seen is None:
                self._forget_expired(now)
                seen = self._seen[instance_id] = _Seen(Bucket(*self.per_instance))
            if not seen.bucket.take(now):
                raise AwsUnavailable("rate limited for this instance")
            if not self._total.take(now):
                raise AwsUnavailable("rate limited")
        answer = self._ask(identity, public_ip)  # outside the lock: two network calls
        with self._lock:
            ttl = POSITIVE_TTL_S if answer is None else NEGATIVE_TTL_S
            seen.public_ip, seen.answer, seen.until = public_ip, answer, now + ttl
        return answer

    def _forget_expired(self, now: float) -> None:
        if len(self._seen) >= MAX_REMEMBERED:
            for instance_id, seen in list(self._seen.items()):
                if seen.until < now:
                    del self._seen[instance_id]

    def _ask(self, identity: Identity, public_ip: str) -> str | None:
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
