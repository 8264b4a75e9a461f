"""The security rules of the policy pack, as plain functions.

Each rule takes a resource's Pulumi type token and its properties (camelCase, as the
engine passes them) and returns the violations found, one sentence each. The policy
runtime passes properties as read-only proxies (``collections.abc.Mapping`` and
``Sequence``, not ``dict`` and ``list``): rules test for those ABCs only. No import of
``pulumi_policy`` here, so tests call the rules directly.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

Props = Mapping[str, Any]
Rule = Callable[[str, Props], list[str]]

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
SSH_PORT = 22
SECRET_ACTIONS = ("secretsmanager:getsecretvalue", "kms:decrypt")
IAM_DOCUMENTS = {  # type -> properties holding a policy document
    "aws:iam/policy:Policy": ("policy",),
    "aws:iam/rolePolicy:RolePolicy": ("policy",),
    "aws:iam/userPolicy:UserPolicy": ("policy",),
    "aws:iam/groupPolicy:GroupPolicy": ("policy",),
    "aws:iam/role:Role": ("inlinePolicies",),
}


def imdsv2_required(resource_type: str, props: Props) -> list[str]:
    """Instance metadata only with session tokens and never past the instance (hop 1)."""
    if resource_type not in (LAUNCH_TEMPLATE, INSTANCE):
        return []
    options = props.get("metadataOptions") or {}
    if options.get("httpEndpoint") == "disabled":
        return []
    problems = []
    if options.get("httpTokens") != "required":
        problems.append("IMDSv2 must be required (metadataOptions.httpTokens = required)")
    if options.get("httpPutResponseHopLimit") != 1:
        problems.append("IMDS hop limit must be 1 (metadataOptions.httpPutResponseHopLimit)")
    return problems


def _true(value: Any) -> bool:
    return value is True or value == "true"


def storage_encrypted(resource_type: str, props: Props) -> list[str]:
    """Disks encrypted, secrets under our own KMS key, keys rotated."""
    problems = []
    if resource_type == LAUNCH_TEMPLATE:
        for mapping in props.get("blockDeviceMappings") or []:
            ebs = mapping.get("ebs")
            if ebs is not None and not _true(ebs.get("encrypted")):
                problems.append(f"volume {mapping.get('deviceName')} must be encrypted")
    elif resource_type == INSTANCE:
        for device in [props.get("rootBlockDevice"), *(props.get("ebsBlockDevices") or [])]:
            if device is not None and not _true(device.get("encrypted")):
                problems.append("instance volumes must be encrypted")
    elif resource_type == "aws:ebs/volume:Volume" and not _true(props.get("encrypted")):
        problems.append("EBS volume must be encrypted")
    elif resource_type == "aws:secretsmanager/secret:Secret" and not props.get("kmsKeyId"):
        problems.append("secret must be encrypted with a customer-managed KMS key (kmsKeyId)")
    elif resource_type == "aws:kms/key:Key" and not _true(props.get("enableKeyRotation")):
        problems.append("KMS key rotation must be on (enableKeyRotation)")
    return problems


def _is_world(cidr: Any) -> bool:
    try:
        return ipaddress.ip_network(str(cidr), strict=False).prefixlen == 0
    except ValueError:
        return False


def _opens_ssh(protocol: Any, from_port: Any, to_port: Any, cidrs: list[Any]) -> bool:
    if str(protocol).lower() not in ("tcp", "6", "-1", "all"):
        return False
    everything = str(protocol) in ("-1", "all")
    covers = everything or (int(from_port or 0) <= SSH_PORT <= int(to_port or 0))
    return covers and any(_is_world(cidr) for cidr in cidrs)


def no_world_ssh(resource_type: str, props: Props) -> list[str]:
    """SSH is never open to 0.0.0.0/0 or ::/0 (bastion addresses only)."""
    rules: list[tuple[Any, Any, Any, list[Any]]] = []
    if resource_type == "aws:ec2/securityGroup:SecurityGroup":
        for rule in props.get("ingress") or []:
            cidrs = [*(rule.get("cidrBlocks") or []), *(rule.get("ipv6CidrBlocks") or [])]
            rules.append((rule.get("protocol"), rule.get("fromPort"), rule.get("toPort"), cidrs))
    elif resource_type == "aws:ec2/securityGroupRule:SecurityGroupRule":
        if props.get("type") == "ingress":
            cidrs = [*(props.get("cidrBlocks") or []), *(props.get("ipv6CidrBlocks") or [])]
            rules.append((props.get("protocol"), props.get("fromPort"), props.get("toPort"), cidrs))
    elif resource_type == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        cidrs = [props.get("cidrIpv4"), props.get("cidrIpv6")]
        rules.append((props.get("ipProtocol"), props.get("fromPort"), props.get("toPort"), cidrs))
    if any(_opens_ssh(*rule) for rule in rules):
        return ["SSH must not be open to the world; allow only bastion CIDRs"]
    return []


def _as_list(value: Any) -> Sequence[Any]:
    """A list (or the runtime's list proxy) as is; anything else as a list of one."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return value
    return [] if value is None else [value]


def _documents(resource_type: str, props: Props) -> Iterator[Mapping[str, Any]]:
    """Every IAM policy document of the resource, parsed (JSON text or an object)."""
    for key in IAM_DOCUMENTS.get(resource_type, ()):
        for entry in _as_list(props.get(key)):
            document = entry
            if key == "inlinePolicies":
                document = entry.get("policy") if isinstance(entry, Mapping) else None
            if isinstance(document, str):
                document = json.loads(document) if document.strip() else None
            if isinstance(document, Mapping):
                yield document


def no_wildcard_secret_access(resource_type: str, props: Props) -> list[str]:
    """Reading secrets or decrypting is granted on named ARNs only, never on ``*``."""
    problems = []
    for document in _documents(resource_type, props):
        for statement in _as_list(document.get("Statement", [])):
            if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
                continue
            if "NotAction" in statement or "NotResource" in statement:
                problems.append("Allow with NotAction/NotResource is too broad")
                continue
            actions = [str(a).lower() for a in _as_list(statement.get("Action", []))]
            touches = any(fnmatchcase(s, a) for a in actions for s in SECRET_ACTIONS)
            resources = [str(r) for r in _as_list(statement.get("Resource", []))]
            if touches and any("*" in resource for resource in resources):
                problems.append(
                    f"statement {statement.get('Sid', '')!r} grants secret access on a "
                    f"wildcard resource {resources}"
                )
    return problems


def no_iam_star(resource_type: str, props: Props) -> list[str]:
    """No statement allows every action (``*``) or every IAM action (``iam:*``): whoever
    holds it could grant itself anything."""
    problems = []
    for document in _documents(resource_type, props):
        for statement in _as_list(document.get("Statement", [])):
            if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
                continue
            actions = [str(a).lower() for a in _as_list(statement.get("Action", []))]
            if any(fnmatchcase("iam:*", action) for action in actions):
                problems.append(f"statement {statement.get('Sid', '')!r} grants iam:*")
    return problems


OIDC_SUB = re.compile(r"repo:[^*?/:]+/[^*?/:]+:environment:[^*?:]+")


def _conditions(statement: Mapping[str, Any], operator: str) -> dict[str, list[str]]:
    block = (statement.get("Condition") or {}).get(operator) or {}
    return {str(k).lower(): [str(v) for v in _as_list(block[k])] for k in block}


def oidc_trust_bound_to_environment(resource_type: str, props: Props) -> list[str]:
    """A role trusting a web identity (GitHub's OIDC) names exactly the audience and a
    ``sub`` of one repository's environment (``StringEquals``, no wildcard): without it,
    any branch, pull request or repository could assume the role."""
    if resource_type != "aws:iam/role:Role":
        return []
    trust = props.get("assumeRolePolicy")
    if isinstance(trust, str):
        trust = json.loads(trust) if trust.strip() else None
    if not isinstance(trust, Mapping):
        return []
    problems = []
    for statement in _as_list(trust.get("Statement", [])):
        if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
            continue
        actions = [str(a).lower() for a in _as_list(statement.get("Action", []))]
        if not any(fnmatchcase("sts:assumerolewithwebidentity", a) for a in actions):
            continue
        principal = statement.get("Principal")
        federated = principal.get("Federated") if isinstance(principal, Mapping) else principal
        hosts = [str(f).split("oidc-provider/")[-1].lower() for f in _as_list(federated)]
        equals = _conditions(statement, "StringEquals")
        for host in hosts or ["*"]:
            subs = equals.get(f"{host}:sub", [])
            if not subs or not all(OIDC_SUB.fullmatch(sub) for sub in subs):
                problems.append(
                    f"web-identity trust of {host} must bind {host}:sub with StringEquals "
                    "to repo:<org>/<repo>:environment:<env>"
                )
            if equals.get(f"{host}:aud") != ["sts.amazonaws.com"]:
                problems.append(f"web-identity trust of {host} must require aud sts.amazonaws.com")
    return problems


RULES: dict[str, tuple[str, Rule]] = {
    "imdsv2-required": ("Instances require IMDSv2 with hop limit 1", imdsv2_required),
    "storage-encrypted": ("Volumes, secrets and keys are encrypted", storage_encrypted),
    "no-world-ssh": ("SSH is never open to 0.0.0.0/0 or ::/0", no_world_ssh),
    "no-wildcard-secret-access": (
        "IAM grants secret reads and decrypts on named resources only",
        no_wildcard_secret_access,
    ),
    "no-iam-star": ("No statement grants * or iam:* (every IAM action)", no_iam_star),
    "oidc-trust-bound-to-environment": (
        "A web-identity trust names one repository environment and the STS audience",
        oidc_trust_bound_to_environment,
    ),
}
