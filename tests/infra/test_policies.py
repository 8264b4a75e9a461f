"""The policy pack: every rule on passing and violating resources, the program's own
resources against every rule, and the pack itself served and asked over gRPC."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy.proxy import unknown_checking_proxy

from idra.config import REPO_ROOT
from policy import rules
from tests.infra.harness import Deployment

LT = rules.LAUNCH_TEMPLATE
SG = "aws:ec2/securityGroup:SecurityGroup"
GOOD_METADATA = {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1}


def _document(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


CASES = [
    # (rule, type, props, violations expected)
    (rules.imdsv2_required, LT, {"metadataOptions": GOOD_METADATA}, 0),
    (rules.imdsv2_required, LT, {"metadataOptions": {"httpEndpoint": "disabled"}}, 0),
    (rules.imdsv2_required, LT, {}, 2),
    (rules.imdsv2_required, LT, {"metadataOptions": GOOD_METADATA | {"httpTokens": "optional"}}, 1),
    (rules.imdsv2_required, rules.INSTANCE, {"metadataOptions": GOOD_METADATA | {
        "httpPutResponseHopLimit": 2}}, 1),
    (rules.storage_encrypted, LT, {"blockDeviceMappings": [
        {"deviceName": "/dev/xvda", "ebs": {"encrypted": "true"}}]}, 0),
    (rules.storage_encrypted, LT, {"blockDeviceMappings": [
        {"deviceName": "/dev/xvda", "ebs": {"volumeSize": 4}}]}, 1),
    (rules.storage_encrypted, rules.INSTANCE, {"rootBlockDevice": {"encrypted": False}}, 1),
    (rules.storage_encrypted, "aws:ebs/volume:Volume", {"encrypted": True}, 0),
    (rules.storage_encrypted, "aws:ebs/volume:Volume", {}, 1),
    (rules.storage_encrypted, "aws:secretsmanager/secret:Secret", {"kmsKeyId": "arn:k"}, 0),
    (rules.storage_encrypted, "aws:secretsmanager/secret:Secret", {"name": "s"}, 1),
    (rules.storage_encrypted, "aws:kms/key:Key", {"enableKeyRotation": False}, 1),
    (rules.no_world_ssh, SG, {"ingress": [{"protocol": "udp", "fromPort": 51820,
        "toPort": 51820, "cidrBlocks": ["0.0.0.0/0"], "ipv6CidrBlocks": ["::/0"]}]}, 0),
    (rules.no_world_ssh, SG, {"ingress": [{"protocol": "tcp", "fromPort": 22,
        "toPort": 22, "cidrBlocks": ["198.51.100.7/32"]}]}, 0),
    (rules.no_world_ssh, SG, {"ingress": [{"protocol": "tcp", "fromPort": 22,
        "toPort": 22, "ipv6CidrBlocks": ["::/0"]}]}, 1),
    (rules.no_world_ssh, SG, {"ingress": [{"protocol": "-1", "fromPort": 0,
        "toPort": 0, "cidrBlocks": ["0.0.0.0/0"]}]}, 1),
    (rules.no_world_ssh, SG, {"ingress": [{"protocol": "tcp", "fromPort": 1,
        "toPort": 1024, "cidrBlocks": ["0.0.0.0/0"]}]}, 1),
    (rules.no_world_ssh, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "cidrIpv4": "0.0.0.0/0"}, 1),
    (rules.no_world_ssh, "aws:ec2/securityGroupRule:SecurityGroupRule", {"type": "ingress",
        "protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"]}, 1),
    (rules.no_iam_star, "aws:iam/rolePolicy:RolePolicy", {"policy": _document(
        {"Effect": "Allow", "Action": ["ec2:*", "iam:*"], "Resource": "*"})}, 1),
    (rules.no_iam_star, "aws:iam/policy:Policy", {"policy": _document(
        {"Effect": "Allow", "Action": "*", "Resource": "*"})}, 1),
    (rules.no_iam_star, "aws:iam/role:Role", {"inlinePolicies": [{"name": "p", "policy":
        _document({"Effect": "Allow", "Action": "IAM:*", "Resource": "arn:aws:iam::1:role/x"})}]},
        1),
    (rules.no_iam_star, "aws:iam/rolePolicy:RolePolicy", {"policy": _document(
        {"Effect": "Allow", "Action": ["iam:Get*", "iam:PassRole"], "Resource": "*"})}, 0),
    (rules.no_iam_star, "aws:iam/rolePolicy:RolePolicy", {"policy": _document(
        {"Effect": "Deny", "Action": "iam:*", "Resource": "*"})}, 0),
    (rules.no_wildcard_secret_access, "aws:iam/rolePolicy:RolePolicy", {"policy": _document(
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": "arn:aws:secretsmanager:eu-west-1:1:secret:idra/x/NODE_TOKEN-abc"})}, 0),
    (rules.no_wildcard_secret_access, "aws:iam/rolePolicy:RolePolicy", {"policy": _document(
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"})}, 1),
    (rules.no_wildcard_secret_access, "aws:iam/policy:Policy", {"policy": _document(
        {"Effect": "Allow", "Action": ["SecretsManager:*"],
         "Resource": ["arn:aws:secretsmanager:eu-west-1:1:secret:idra/*"]})}, 1),
    (rules.no_wildcard_secret_access, "aws:iam/policy:Policy", {"policy": _document(
        {"Effect": "Allow", "Action": "*", "Resource": "*"})}, 1),
    (rules.no_wildcard_secret_access, "aws:iam/role:Role", {"inlinePolicies": [
        {"name": "p", "policy": _document({"Effect": "Allow", "Action": "kms:Decrypt",
                                           "Resource": "*"})}]}, 1),
    (rules.no_wildcard_secret_access, "aws:iam/role:Role", {"inlinePolicies": [
        {"name": "ok", "policy": _document({"Effect": "Allow", "Action": "kms:Decrypt",
                                            "Resource": "arn:aws:kms:eu-west-1:1:key/k"})},
        {"name": "bad", "policy": _document({"Effect": "Allow", "Action": [
            "secretsmanager:Get*"], "Resource": ["arn:aws:secretsmanager:*"]})}]}, 1),
    (rules.no_wildcard_secret_access, "aws:iam/role:Role", {"inlinePolicies": [
        {"name": "empty", "policy": ""}]}, 0),
    (rules.no_wildcard_secret_access, "aws:iam/policy:Policy", {"policy": _document(
        {"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"})}, 0),
    (rules.no_wildcard_secret_access, "aws:iam/policy:Policy", {"policy": _document(
        {"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:x"})}, 1),
]  # fmt: skip

GITHUB = "arn:aws:iam::1:oidc-provider/token.actions.githubusercontent.com"
HOST = "token.actions.githubusercontent.com"


def _trust(condition: dict | None, action: str = "sts:AssumeRoleWithWebIdentity") -> dict:
    statement = {"Effect": "Allow", "Principal": {"Federated": GITHUB}, "Action": action}
    if condition is not None:
        statement["Condition"] = condition
    return {"assumeRolePolicy": _document(statement)}


AUD = {f"{HOST}:aud": "sts.amazonaws.com"}
ROLE = "aws:iam/role:Role"
CASES += [
    (rules.oidc_trust_bound_to_environment, ROLE, _trust({"StringEquals": AUD | {
        f"{HOST}:sub": "repo:idra-vpn/exit-nodes:environment:production"}}), 0),
    (rules.oidc_trust_bound_to_environment, ROLE, _trust({"StringEquals": AUD}), 1),
    (rules.oidc_trust_bound_to_environment, ROLE, _trust(None), 2),
    (rules.oidc_trust_bound_to_environment, ROLE, _trust({"StringEquals": AUD | {
        f"{HOST}:sub": "repo:idra-vpn/exit-nodes:ref:refs/heads/main"}}), 1),
    (rules.oidc_trust_bound_to_environment, ROLE, _trust({"StringLike": AUD | {
        f"{HOST}:sub": "repo:idra-vpn/exit-nodes:environment:*"}}), 2),
    (rules.oidc_trust_bound_to_environment, ROLE, _trust({"StringEquals": AUD | {
        f"{HOST}:sub": "repo:idra-vpn/*:environment:production"}}), 1),
    (rules.oidc_trust_bound_to_environment, ROLE, _trust({"StringEquals": {
        f"{HOST}:sub": "repo:idra-vpn/exit-nodes:environment:production"}}, "sts:*"), 1),
    (rules.oidc_trust_bound_to_environment, ROLE, {"assumeRolePolicy": _document({
        "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole"})}, 0),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "typ", "props", "expected"), CASES)
def test_rule(rule: rules.Rule, typ: str, props: dict, expected: int) -> None:
    """With the objects the policy runtime passes: Mapping/Sequence proxies, not dicts."""
    proxied = unknown_checking_proxy(json.loads(json.dumps(props)))
    assert not isinstance(proxied, dict)
    assert len(rule(typ, proxied)) == expected


def test_every_rule_has_a_violating_case() -> None:
    violated = {case[0] for case in CASES if case[3]}
    assert violated == {rule for _, rule in rules.RULES.values()}


def test_the_program_passes_every_policy(deployment: Deployment) -> None:
    checked = 0
    for resource in deployment.resources:
        props = unknown_checking_proxy(json.loads(json.dumps(resource.inputs)))
        for name, (_, rule) in rules.RULES.items():
            assert rule(resource.typ, props) == [], (name, resource.name)
        checked += 1
    assert checked > 20


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """The real policy pack, served by pulumi-policy as `pulumi preview` would start it."""
    pack = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "policy" / "__main__.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert pack.stdout is not None
        port = int(pack.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        pack.kill()
        pack.wait(timeout=10)


def test_pack_serves_every_rule_as_mandatory(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "idra-security"
    assert {p.name for p in info.policies} == set(rules.RULES)
    assert {p.enforcementLevel for p in info.policies} == {analyzer_pb2.MANDATORY}


def _analyze(analyzer: analyzer_pb2_grpc.AnalyzerStub, typ: str, props: dict) -> list[str]:
    properties = struct_pb2.Struct()
    properties.update(props)
    request = analyzer_pb2.AnalyzeRequest(type=typ, properties=properties, urn="urn:x", name="x")
    return [d.policyName for d in analyzer.Analyze(request).diagnostics]


def test_pack_rejects_world_ssh_and_accepts_ours(
    analyzer: analyzer_pb2_grpc.AnalyzerStub, deployments: dict[str, Deployment]
) -> None:
    world_ssh = {"ingress": [{"protocol": "tcp", "fromPort": 22, "toPort": 22,
                              "cidrBlocks": ["0.0.0.0/0"]}]}  # fmt: skip
    assert _analyze(analyzer, SG, world_ssh) == ["no-world-ssh"]
    ours = deployments["production"].of_type(SG)[0]
    assert _analyze(analyzer, SG, json.loads(json.dumps(ours.inputs))) == []
    template = deployments["production"].of_type(LT)[0].inputs
    optional = template | {"metadataOptions": GOOD_METADATA | {"httpTokens": "optional"}}
    assert _analyze(analyzer, LT, json.loads(json.dumps(template))) == []
    assert _analyze(analyzer, LT, json.loads(json.dumps(optional))) == ["imdsv2-required"]


def test_pack_refuses_an_oidc_trust_without_an_environment(
    analyzer: analyzer_pb2_grpc.AnalyzerStub, deployments: dict[str, Deployment]
) -> None:
    """Through the served pack: a GitHub trust without ``sub`` is refused; ours passes."""
    unbound = _trust({"StringEquals": AUD})
    assert _analyze(analyzer, ROLE, unbound) == ["oidc-trust-bound-to-environment"]
    ours = [r for r in deployments["staging"].of_type(ROLE) if r.name.startswith("ci-")]
    assert len(ours) == 3
    for role in ours:
        assert _analyze(analyzer, ROLE, json.loads(json.dumps(role.inputs))) == [], role.name


def test_pack_checks_role_inline_policies(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    """Through the real runtime (proxy objects): a role's inline policy is not skipped."""
    wildcard = _document({"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                          "Resource": "*"})  # fmt: skip
    role = {"assumeRolePolicy": "{}", "inlinePolicies": [{"name": "p", "policy": wildcard}]}
    assert _analyze(analyzer, "aws:iam/role:Role", role) == ["no-wildcard-secret-access"]
    named = {"inlinePolicies": [{"name": "p", "policy": wildcard.replace('"*"', '"arn:x"')}]}
    assert _analyze(analyzer, "aws:iam/role:Role", named) == []


def test_pack_refuses_iam_star_and_passes_our_deploy_role(
    analyzer: analyzer_pb2_grpc.AnalyzerStub, deployments: dict[str, Deployment]
) -> None:
    """Through the served pack: a policy granting iam:* is refused; every one of ours
    (the deploy role's included) passes."""
    policy = "aws:iam/rolePolicy:RolePolicy"
    star = {"role": "r", "policy": _document({"Effect": "Allow", "Action": "iam:*",
                                              "Resource": "*"})}  # fmt: skip
    assert _analyze(analyzer, policy, star) == ["no-iam-star"]
    for stack, deployment in deployments.items():
        ours = deployment.of_type(policy)
        assert f"ci-{stack}" in [p.name for p in ours]
        for resource in ours:
            assert _analyze(analyzer, policy, json.loads(json.dumps(resource.inputs))) == [], (
                resource.name
            )
