"""Pulumi mocks that answer like AWS would and record every resource and invoke.

Imports nothing but the standard library and ``pulumi`` (not even ``secrets``), so the
language-host bootstrap can load it before the program without hiding an import problem.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor

ACCOUNTS = {"staging": "111111111111", "production": "222222222222"}


@dataclass
class Resource:
    typ: str
    name: str
    inputs: dict[str, Any]
    region: str
    state: dict[str, Any]
    id: str = ""


@dataclass
class Deployment:
    stack: str
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_values: list[str] = field(default_factory=list)
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    depends_on: dict[str, set[str]] = field(default_factory=dict)  # name -> "type::name"s
    options: dict[tuple[str, str], dict[str, bool]] = field(default_factory=dict)  # (typ, name)

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str, region: str) -> Resource:
        """The region's node resource of ``typ`` (not the ops service's, named ``ops*``)."""
        (found,) = [r for r in self.nodes(typ) if r.region == region]
        return found

    def nodes(self, typ: str) -> list[Resource]:
        """The resources of ``typ`` but the ops service's."""
        return [r for r in self.of_type(typ) if not r.name.startswith("ops")]

    def arns(self) -> set[str]:
        return {r.state["arn"] for r in self.resources if "arn" in r.state}


def _short(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


ALPINE = "538276064493"


@dataclass(frozen=True)
class Image:
    """A public AMI as EC2 lists it; its id differs per region, like AWS's."""

    name: str
    created: str  # creationDate, ISO 8601
    architecture: str = "x86_64"
    owner: str = ALPINE
    deprecated: bool = False  # past its DeprecationTime: lookups skip it unless asked
    root_device: str = "/dev/xvda"

    def id_in(self, region: str) -> str:
        return f"ami-{_short(f'{region}/{self.name}', 17)}"


# What the Alpine owner has published, oldest first; the stacks pin 3.22.2-r0.
IMAGES = (
    Image("alpine-3.22.1-x86_64-uefi-cloudinit-r0", "2026-07-15T10:00:00.000Z"),
    Image("alpine-3.22.2-x86_64-uefi-cloudinit-r0", "2026-10-01T10:00:00.000Z"),
    Image("alpine-3.22.2-aarch64-uefi-cloudinit-r0", "2026-10-01T10:00:00.000Z", "arm64"),
)


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers like AWS would (realistic ARNs per account and region) and records all."""

    def __init__(self, deployment: Deployment, images: tuple[Image, ...] = IMAGES) -> None:
        self.deployment = deployment
        self.images = images
        self.account = ACCOUNTS.get(deployment.stack, "333333333333")
        self.provider_regions: dict[str, str] = {}

    def _region(self, provider: str | None) -> str:
        # A provider reference is "<urn>::<id>"; the urn ends with the provider's name.
        parts = (provider or "").split("::")
        return self.provider_regions.get(parts[-2], "") if len(parts) > 1 else ""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        if args.typ == "pulumi:providers:aws":
            self.provider_regions[args.name] = args.inputs["region"]
        region = args.inputs["region"] if args.typ == "pulumi:providers:aws" else ""
        region = region or self._region(args.provider)
        state = dict(args.inputs) | self._computed(args, region)
        resource_id = state.pop("id", f"{args.name}-{_short(args.name)}")
        self.deployment.resources.append(
            Resource(args.typ, args.name, dict(args.inputs), region, state, resource_id)
        )
        return resource_id, state

    def _computed(self, args: pulumi.runtime.MockResourceArgs, region: str) -> dict[str, Any]:
        prefix = f"arn:aws:{{}}:{region}:{self.account}"
        inputs, unique = args.inputs, _short(f"{self.deployment.stack}/{args.name}", 12)
        match args.typ:
            case "aws:kms/key:Key":
                return {"arn": f"{prefix.format('kms')}:key/mrk-{unique}"}
            case "aws:kms/replicaKey:ReplicaKey":
                key_id = inputs["primaryKeyArn"].split("/")[-1]
                return {"arn": f"{prefix.format('kms')}:key/{key_id}"}
            case "aws:secretsmanager/secret:Secret":
                arn = f"{prefix.format('secretsmanager')}:secret:{inputs['name']}-{unique[:6]}"
                return {"arn": arn, "id": arn}
            case "aws:autoscaling/group:Group":
                return {
                    "arn": f"{prefix.format('autoscaling')}:autoScalingGroup:{unique}:"
                    f"autoScalingGroupName/{inputs['name']}",
                    "id": inputs["name"],
                }
            case "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
                host = inputs["url"].removeprefix("https://")
                return {"arn": f"arn:aws:iam::{self.account}:oidc-provider/{host}"}
            case "aws:sns/topic:Topic":
                return {"arn": f"{prefix.format('sns')}:{inputs['name']}"}
            case "aws:cloudwatch/eventRule:EventRule":
                return {"arn": f"{prefix.format('events')}:rule/{args.name}-{unique[:6]}",
                        "name": f"{args.name}-{unique[:6]}"}  # fmt: skip
            case "aws:ec2/vpc:Vpc":
                return {"ipv6CidrBlock": "2a05:d014:1f00:6600::/56"}
            case "aws:ec2/launchTemplate:LaunchTemplate":
                return {"latestVersion": 1, "arn": f"{prefix.format('ec2')}:launch-template/lt"}
            case "aws:iam/role:Role" | "aws:iam/instanceProfile:InstanceProfile":
                kind = args.typ.split(":")[-1].replace("InstanceProfile", "instance-profile")
                name = f"{args.name}-{unique[:7]}"
                return {"arn": f"arn:aws:iam::{self.account}:{kind.lower()}/{name}", "name": name}
            case "random:index/randomPassword:RandomPassword":
                value = base64.urlsafe_b64encode(os.urandom(27)).decode()
                self.deployment.secret_values.append(value)
                return {"result": value}
        return {}

    def _get_ami(self, args: dict[str, Any], region: str) -> dict[str, Any]:
        """``ec2.getAmi`` as the AWS provider answers it: filters (with wildcards) and
        owners narrow the images; ``mostRecent`` picks the newest, else more than one
        match is an error."""
        fields = {"name": "name", "architecture": "architecture"}
        found = [i for i in self.images if i.owner in (args.get("owners") or [i.owner])]
        if not args.get("includeDeprecated"):
            found = [i for i in found if not i.deprecated]
        for entry in args.get("filters", []):
            if entry["name"] == "image-id":
                found = [i for i in found if i.id_in(region) in entry["values"]]
            elif entry["name"] in fields:
                attr = fields[entry["name"]]
                found = [
                    i for i in found
                    if any(fnmatchcase(getattr(i, attr), v) for v in entry["values"])
                ]  # fmt: skip
        if not found:
            raise ValueError("Your query returned no results")
        if len(found) > 1 and not args.get("mostRecent"):
            raise ValueError("Your query returned more than one result")
        image = max(found, key=lambda i: i.created)
        return {"id": image.id_in(region), "name": image.name, "creationDate": image.created,
                "rootDeviceName": image.root_device}  # fmt: skip

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        self.deployment.invokes.append((args.token, dict(args.args)))
        region = self._region(args.provider)
        match args.token:
            case "aws:index/getAvailabilityZones:getAvailabilityZones":
                return {"names": [f"{region}{zone}" for zone in "abc"]}, []
            case "aws:ec2/getAmi:getAmi":
                return self._get_ami(args.args, region), []
            case "aws:index/getCallerIdentity:getCallerIdentity":
                arn = f"arn:aws:sts::{self.account}:assumed-role/deploy/pulumi"
                return {"accountId": self.account, "arn": arn, "userId": "AROA:pulumi"}, []
            case "aws:ec2/getSubnet:getSubnet":
                return {"id": args.args["id"], "vpcId": "vpc-0123456789abcdef0"}, []
        raise NotImplementedError(args.token)


class RecordingMonitor(MockMonitor):
    """Pulumi's mock monitor, also recording what each resource waits for (inputs and
    ``depends_on``), which the mocks themselves never see."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.deployment = mocks.deployment

    def RegisterResource(self, request: Any) -> Any:
        urns = request.dependencies
        self.deployment.depends_on[request.name] = {
            "::".join(u.split("::")[-2:]).split("$")[-1] for u in urns
        }
        self.deployment.options[(request.type, request.name)] = {
            "protect": bool(request.protect),
            "delete_before_replace": bool(request.deleteBeforeReplace),
        }
        return super().RegisterResource(request)
