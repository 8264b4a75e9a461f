"""Pulumi mocks that answer like AWS would and record every resource and invoke.

Imports nothing but the standard library and ``pulumi`` (not even ``secrets``), so the
language-host bootstrap can load it before the program without hiding an import problem.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import pulumi

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

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str, region: str) -> Resource:
        (found,) = [r for r in self.of_type(typ) if r.region == region]
        return found

    def arns(self) -> set[str]:
        return {r.state["arn"] for r in self.resources if "arn" in r.state}


def _short(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers like AWS would (realistic ARNs per account and region) and records all."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
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

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        self.deployment.invokes.append((args.token, dict(args.args)))
        region = self._region(args.provider)
        match args.token:
            case "aws:index/getAvailabilityZones:getAvailabilityZones":
                return {"names": [f"{region}{zone}" for zone in "abc"]}, []
            case "aws:ec2/getAmi:getAmi":
                return {"id": "ami-0123456789abcdef0", "name": "alpine-3.22.1-x86_64"}, []
            case "aws:ec2/getSubnet:getSubnet":
                return {"id": args.args["id"], "vpcId": "vpc-0123456789abcdef0"}, []
        raise NotImplementedError(args.token)
