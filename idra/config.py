"""Stack configuration: the one loader and validator for render, infra and lab.

Every environment-specific value lives in ``Pulumi.<stack>.yaml`` under the ``idra:``
namespace. :func:`load_stack` reads that file; :func:`parse` validates a mapping of
un-namespaced keys (what the Pulumi program gets from ``pulumi.Config``). Any problem
raises :class:`ConfigError` whose message is one line naming the file and the key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

NAMESPACE = "idra"
LIFECYCLE_HOOK = "idra-drain"  # the ASG's termination hook; the agent completes it
LAUNCH_HOOK = "idra-ready"  # the ASG's launch hook; the agent completes it once serving
OPS_NAMESPACE = "IDRA/Ops"  # CloudWatch namespace of the ops loop's metrics (and nothing else)
GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
HOOK_TIMEOUT_MAX = 7200  # AWS's limit on a lifecycle hook's heartbeat timeout
REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET_KEYS = ("nodeToken", "firebasePrivateKey", "blindedSigningPrivateKey")
# Namespaces a stack file may hold besides ours (providers configured by Pulumi).
FOREIGN_NAMESPACES = ("aws", "pulumi", "random")

IfName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
SubnetId = Annotated[str, Field(pattern=r"^subnet-[0-9a-f]{8,17}$")]
AmiId = Annotated[str, Field(pattern=r"^ami-[0-9a-f]{8,17}$")]
RoleArn = Annotated[str, Field(pattern=r"^arn:aws:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")]
Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")]
Interval = Annotated[int, Field(ge=30, le=86400)]


class ConfigError(ValueError):
    """A stack value is missing or wrong; the message is one line naming file and key."""


def _https(url: str) -> str:
    if not re.fullmatch(r"https://[A-Za-z0-9.-]+(:\d{1,5})?(/\S*)?", url):
        raise ValueError("must be an https:// URL")
    return url


def _region(name: str) -> str:
    if not re.fullmatch(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}", name):
        raise ValueError(f"{name!r} is not an AWS region name (like eu-west-1)")
    return name


HttpsUrl = Annotated[str, AfterValidator(_https)]
Region = Annotated[str, AfterValidator(_region)]


class StackConfig(BaseModel):
    """Validated settings of one environment (stack)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    stack: str = Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")
    # The one AWS account this stack may deploy into (every provider's allowed_account_ids).
    aws_account_id: str = Field(pattern=r"^\d{12}$")
    regions: list[Region] = Field(min_length=1)
    instance_types: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")]] = Field(
        min_length=1
    )
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    min_size: int = Field(ge=0, le=1000)
    max_size: int = Field(ge=1, le=1000)
    scale_cpu_target: float = Field(default=60.0, gt=0, le=95)
    scale_network_out_target_mbps: float | None = Field(default=None, gt=0)
    wireguard_port: int = Field(default=51820, ge=1, le=65535)
    uplink_interface: IfName = "eth0"
    tunnel_interface: IfName = "wg0"
    tunnel_mtu: int = Field(default=1420, ge=1280, le=9000)
    client_pool_ipv4: ipaddress.IPv4Network
    client_pool_ipv6: ipaddress.IPv6Network
    vpc_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.0.0.0/16")
    existing_subnet_ids: dict[Region, list[SubnetId]] = Field(default_factory=dict)
    ssh_bastion_cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list
    )
    block_smtp: bool = True
    conntrack_max: int = Field(default=262144, ge=16384, le=16_777_216)
    control_plane_url: HttpsUrl
    agent_url: HttpsUrl
    agent_sha256: Sha256
    ami_owner: str = Field(default="538276064493", pattern=r"^\d{12}$")
    # The image is pinned: one exact image name (no wildcard), or an id per region.
    ami_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9()\[\]./'@_-]{3,128}$")
    ami_ids: dict[Region, AmiId] = Field(default_factory=dict)
    root_volume_gb: int = Field(default=4, ge=1, le=64)
    health_check_grace_seconds: int = Field(default=300, ge=0, le=7200)
    launch_hook_timeout_seconds: int = Field(default=900, ge=30, le=HOOK_TIMEOUT_MAX)
    # After InService (the agent already serves): until its metrics count for scaling.
    instance_warmup_seconds: int = Field(default=120, ge=0, le=3600)
    max_drain_seconds: int = Field(default=21600, ge=60, le=172800)
    # Where the control plane runs: the only region holding its two private keys.
    control_plane_region: Region | None = None  # default: the first of ``regions``
    # The roles that may read FIREBASE_PRIVATE_KEY and BLINDED_SIGNING_PRIVATE_KEY.
    control_plane_role_arns: list[RoleArn] = Field(default_factory=list)
    # GitHub "org/repo" whose environments may assume the CI roles (none without it).
    github_repository: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
    )
    # An account has one GitHub OIDC provider: pass its ARN, or this stack creates it.
    github_oidc_provider_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws:iam::\d{12}:oidc-provider/token\.actions\.githubusercontent\.com$",
    )
    alarm_emails: list[Email] = Field(default_factory=list)  # the alarm topic's subscribers
    ops_canary_interval_seconds: Interval = 300
    ops_rollout_interval_seconds: Interval = 300
    ops_reaper_interval_seconds: Interval = 60
    ops_lease_seconds: int = Field(default=180, ge=60, le=3600)
    # The pinned ops artifact (the idra zipapp) for the ops service's instance; without
    # it the stack has no ops group.
    ops_url: HttpsUrl | None = None
    ops_sha256: Sha256 | None = None
    ops_instance_type: str = Field(default="t3.small", pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
    # Present only as ``{secure: ...}`` entries in the file; values are read by Pulumi.
    secrets_set: frozenset[str] = frozenset()

    @field_validator("aws_account_id", mode="before")
    @classmethod
    def _quoted_account(cls, value: Any) -> Any:
        if isinstance(value, int):
            raise ValueError("quote it: YAML reads a bare number and drops leading zeros")
        return value

    @field_validator("regions")
    @classmethod
    def _unique_regions(cls, regions: list[str]) -> list[str]:
        if len(set(regions)) != len(regions):
            raise ValueError("lists a region twice")
        return regions

    @field_validator("client_pool_ipv4", "client_pool_ipv6")
    @classmethod
    def _private_pool(cls, pool: ipaddress.IPv4Network | ipaddress.IPv6Network):
        cgnat = ipaddress.IPv4Network("100.64.0.0/10")
        if not (pool.is_private or (pool.version == 4 and pool.subnet_of(cgnat))):
            raise ValueError(f"{pool} is not a private range")
        if pool.num_addresses < (32 if pool.version == 4 else 4):
            raise ValueError(f"{pool} is too small for a client pool (its top /28 is for canaries)")
        return pool

    @field_validator("ssh_bastion_cidrs")
    @classmethod
    def _no_world_ssh(cls, cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network]):
        for cidr in cidrs:
            if cidr.prefixlen == 0:
                raise ValueError(f"{cidr} opens SSH to the world; list bastion addresses")
        return cidrs

    @model_validator(mode="after")
    def _consistent(self) -> StackConfig:
        if self.min_size > self.max_size:
            raise _KeyedError("minSize", f"{self.min_size} is above maxSize {self.max_size}")
        if self.client_pool_ipv4.overlaps(self.vpc_cidr):
            raise _KeyedError(
                "clientPoolIpv4", f"{self.client_pool_ipv4} overlaps vpcCidr {self.vpc_cidr}"
            )
        if self.uplink_interface == self.tunnel_interface:
            raise _KeyedError("tunnelInterface", "must differ from uplinkInterface")
        for key, per_region in (("existingSubnetIds", self.existing_subnet_ids),
                                ("amiIds", self.ami_ids)):  # fmt: skip
            for region in per_region:
                if region not in self.regions:
                    raise _KeyedError(key, f"{region} is not in regions")
        if self.control_plane_region and self.control_plane_region not in self.regions:
            raise _KeyedError(
                "controlPlaneRegion", f"{self.control_plane_region} is not in regions"
            )
        if (self.ops_url is None) != (self.ops_sha256 is None):
            raise _KeyedError("opsSha256", "opsUrl and opsSha256 go together")
        if self.ops_lease_seconds <= 2 * self.ops_tick_seconds:
            raise _KeyedError(
                "opsLeaseSeconds",
                f"must be above twice the ops loop's shortest interval ({self.ops_tick_seconds}s)",
            )
        unpinned = [region for region in self.regions if region not in self.ami_ids]
        if unpinned and not self.ami_name:
            raise _KeyedError(
                "amiName", f"required: pin the image by exact name, or amiIds for {unpinned[0]}"
            )
        return self

    @property
    def termination_hook_timeout_seconds(self) -> int:
        """The drain hook waits the whole drain (the agent sends lifecycle heartbeats
        when the drain is longer than AWS's 2-hour limit on one heartbeat timeout)."""
        return min(self.max_drain_seconds, HOOK_TIMEOUT_MAX)

    @property
    def primary_region(self) -> str:
        """Where the environment's single resources live (key, secrets, ops service)."""
        return self.regions[0]

    @property
    def secrets_region(self) -> str:
        """Where the control plane runs: the only region with its two private keys."""
        return self.control_plane_region or self.primary_region

    @property
    def ops_tick_seconds(self) -> int:
        """The ops loop wakes this often (its shortest interval) and renews its lease."""
        return min(
            self.ops_canary_interval_seconds,
            self.ops_rollout_interval_seconds,
            self.ops_reaper_interval_seconds,
        )

    @property
    def ops_asg_name(self) -> str:
        """The ops service's one-instance group (never a node group)."""
        return f"idra-{self.stack}-ops"

    def asg_name(self, region: str) -> str:
        """The auto-scaling group's name (fixed, so user-data can name it before it exists)."""
        return f"idra-{self.stack}-{region}"

    def secret_name(self, key: str) -> str:
        """Secrets Manager name of one of this environment's secrets."""
        return f"idra/{self.stack}/{key}"

    def tunnel_address(self, version: Literal[4, 6]) -> str:
        """The node's own tunnel address with the pool's prefix (first host)."""
        pool = self.client_pool_ipv4 if version == 4 else self.client_pool_ipv6
        return f"{pool.network_address + 1}/{pool.prefixlen}"


class _KeyedError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def stack_file(stack: str, root: Path = REPO_ROOT) -> Path:
    return root / f"Pulumi.{stack}.yaml"


def load_stack(stack: str, root: Path = REPO_ROOT) -> StackConfig:
    """Read and validate ``Pulumi.<stack>.yaml`` from ``root``."""
    path = stack_file(stack, root)
    source = path.name
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", stack):
        raise ConfigError(f"{stack!r}: not a stack name (lowercase letters, digits, dashes)")
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        there = sorted(p.name[7:-5] for p in root.glob("Pulumi.*.yaml"))
        known = f" (stacks here: {', '.join(there)})" if there else " (no stack files here)"
        raise ConfigError(f"{path}: no such stack file{known}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}:{where} not valid YAML") from None
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise ConfigError(f"{source}: needs a top-level 'config:' mapping")
    values: dict[str, Any] = {}
    for full_key, value in document["config"].items():
        namespace, _, key = str(full_key).partition(":")
        if namespace in FOREIGN_NAMESPACES:
            continue
        if namespace != NAMESPACE or not key:
            raise ConfigError(f"{source}: {full_key}: unknown key (expected '{NAMESPACE}:<key>')")
        values[key] = value
    return parse(values, stack=stack, source=source)


def parse(values: Mapping[str, Any], *, stack: str, source: str) -> StackConfig:
    """Validate un-namespaced stack values; ``source`` names the file in error messages."""
    data = dict(values)
    secrets: set[str] = set()
    for key in SECRET_KEYS:
        if key not in data:
            continue
        value = data.pop(key)
        if not (isinstance(value, dict) and set(value) == {"secure"}):
            raise ConfigError(
                f"{source}: {NAMESPACE}:{key}: must be encrypted; "
                f"run 'pulumi config set --secret {NAMESPACE}:{key} ...'"
            )
        secrets.add(key)
    data["stack"] = stack
    data["secretsSet"] = frozenset(secrets)
    try:
        return StackConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None
    except _KeyedError as exc:
        raise ConfigError(f"{source}: {NAMESPACE}:{exc.key}: {exc}") from None


def _one_line(exc: ValidationError, source: str) -> str:
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    key = loc[0] if loc else "?"
    where = f"{NAMESPACE}:{key}" + "".join(f"[{part}]" for part in loc[1:])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = f"required; run 'pulumi config set {NAMESPACE}:{key} ...'"
    elif error["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    elif "input" in error and not isinstance(error["input"], dict | list):
        message = f"{message} (got {error['input']!r})"
    if isinstance(error.get("ctx", {}).get("error"), _KeyedError):
        keyed = error["ctx"]["error"]
        return f"{source}: {NAMESPACE}:{keyed.key}: {keyed}"
    return f"{source}: {where}: {message}"
