"""Roles as code and the private keys' home: each property on each resource, by name."""

from __future__ import annotations

import fnmatch
import json

import pytest

from idra.config import OPS_NAMESPACE, load_stack
from infra.roles import iam_names
from tests.infra.harness import ACCOUNTS, Deployment, Resource, deploy, stack_config

ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
SECRET = "aws:secretsmanager/secret:Secret"
SECRET_POLICY = "aws:secretsmanager/secretPolicy:SecretPolicy"
OIDC = "aws:iam/openIdConnectProvider:OpenIdConnectProvider"
TABLE = "aws:dynamodb/table:Table"
HOST = "token.actions.githubusercontent.com"
PRIVATE_KEYS = ("FIREBASE_PRIVATE_KEY", "BLINDED_SIGNING_PRIVATE_KEY")


def with_secrets(stack: str, changes: dict[str, str | None]) -> dict[str, str]:
    config = stack_config(stack) | {
        "idra:firebasePrivateKey": "test-firebase-key",
        "idra:blindedSigningPrivateKey": "test-signing-key",
    }
    return {k: v for k, v in (config | changes).items() if v is not None}


def named(deployment: Deployment, typ: str, name: str) -> Resource:
    (found,) = [r for r in deployment.of_type(typ) if r.name == name]
    return found


def statements(deployment: Deployment, policy: str) -> dict[str, dict]:
    document = json.loads(named(deployment, ROLE_POLICY, policy).inputs["policy"])
    return {s["Sid"]: s for s in document["Statement"]}


def trust(role: Resource) -> list[dict]:
    return json.loads(role.inputs["assumeRolePolicy"])["Statement"]


def test_ops_role_is_assumed_by_ec2_only(deployment: Deployment) -> None:
    (statement,) = trust(named(deployment, ROLE, "ops"))
    assert statement["Principal"] == {"Service": "ec2.amazonaws.com"}, "ops role trust"
    assert statement["Action"] == "sts:AssumeRole", "ops role trust"


def test_ops_role_describes_on_star_only_what_has_no_narrower_resource(
    deployment: Deployment,
) -> None:
    describe = statements(deployment, "ops")["Describe"]
    assert describe["Resource"] == "*"
    assert all(":Describe" in action for action in describe["Action"]), "ops Describe"


def test_ops_role_acts_only_on_the_stacks_own_groups(deployment: Deployment) -> None:
    act = statements(deployment, "ops")["ActOnOwnNodeGroups"]
    assert sorted(act["Action"]) == [
        "autoscaling:CompleteLifecycleAction",
        "autoscaling:SetDesiredCapacity",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    account = ACCOUNTS[deployment.stack]
    regions = load_stack(deployment.stack).regions
    assert act["Resource"] == [
        f"arn:aws:autoscaling:{r}:{account}:autoScalingGroup:*:"
        f"autoScalingGroupName/idra-{deployment.stack}-{r}"
        for r in regions
    ], "ops ActOnOwnNodeGroups"
    for region, arn in deployment.outputs["asgArns"].items():
        assert any(fnmatch.fnmatchcase(arn, pattern) for pattern in act["Resource"]), region


def test_ops_role_puts_metrics_only_in_its_namespace(deployment: Deployment) -> None:
    metrics = statements(deployment, "ops")["OwnMetrics"]
    assert metrics["Action"] == "cloudwatch:PutMetricData"
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": OPS_NAMESPACE}}


def test_ops_role_has_no_lease_table_the_lease_is_in_the_control_plane(
    deployment: Deployment,
) -> None:
    """The ops loop's lease moved into the control plane: no DynamoDB table, no grant."""
    assert set(statements(deployment, "ops")) == {"Describe", "ActOnOwnNodeGroups", "OwnMetrics"}
    assert not deployment.of_type(TABLE)
    for policy in deployment.of_type("aws:iam/rolePolicy:RolePolicy"):
        assert "dynamodb" not in policy.inputs["policy"], policy.name
    assert "opsLeaseTable" not in deployment.outputs


def test_one_github_oidc_provider_for_sts(deployment: Deployment) -> None:
    (provider,) = deployment.of_type(OIDC)
    assert provider.inputs["url"] == f"https://{HOST}"
    assert provider.inputs["clientIdLists"] == ["sts.amazonaws.com"]


def test_ci_roles_trust_only_their_environment(deployment: Deployment) -> None:
    stack = deployment.stack
    (provider,) = deployment.of_type(OIDC)
    environments = {f"preview-{stack}", stack, f"{stack}-lifecycle"}
    roles = [r for r in deployment.of_type(ROLE) if r.name.startswith("ci-")]
    assert {r.name for r in roles} == {f"ci-{env}" for env in environments}
    for role in roles:
        (statement,) = trust(role)
        assert statement["Principal"] == {"Federated": provider.state["arn"]}, role.name
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity", role.name
        assert statement["Condition"] == {
            "StringEquals": {
                f"{HOST}:aud": "sts.amazonaws.com",
                f"{HOST}:sub": f"repo:idra-vpn/exit-nodes:environment:{role.name[3:]}",
            }
        }, role.name


def test_preview_role_reads_and_never_decrypts(deployment: Deployment) -> None:
    (statement,) = statements(deployment, f"ci-preview-{deployment.stack}").values()
    for action in statement["Action"]:
        verb = action.split(":")[1]
        assert verb.startswith(("Describe", "Get", "List")), action
        assert action not in ("secretsmanager:GetSecretValue", "kms:Decrypt"), action


def test_deploy_role_reads_only_its_own_secrets(deployment: Deployment) -> None:
    read = statements(deployment, f"ci-{deployment.stack}")["ReadOwnSecrets"]
    assert all("*" not in arn for arn in read["Resource"]), read["Resource"]
    assert all(f"idra/{deployment.stack}/" in arn or ":kms:" in arn for arn in read["Resource"])


def test_deploy_role_manages_only_this_programs_iam(deployment: Deployment) -> None:
    """No iam:*: roles, profiles and the OIDC provider by ARN name prefix, PassRole of the
    instance roles to EC2 only."""
    stack, account = deployment.stack, ACCOUNTS[deployment.stack]
    regions = load_stack(stack).regions
    deploy = statements(deployment, f"ci-{stack}")
    for statement in deploy.values():
        actions = statement["Action"] if isinstance(statement["Action"], list) else [
            statement["Action"]]  # fmt: skip
        assert not [a for a in actions if a in ("*", "iam:*")], statement["Sid"]
        if any(a.startswith("iam:") for a in actions):
            resources = statement["Resource"]
            resources = resources if isinstance(resources, list) else [resources]
            assert all(r.startswith(f"arn:aws:iam::{account}:") for r in resources), resources
    node_roles = [f"arn:aws:iam::{account}:role/{region}-node-*" for region in regions]
    assert deploy["ManageOwnRoles"]["Resource"] == [
        *node_roles,
        f"arn:aws:iam::{account}:role/ops-*",
        f"arn:aws:iam::{account}:role/ci-*",
    ]
    assert deploy["ManageOwnInstanceProfiles"]["Resource"] == [
        *(r.replace(":role/", ":instance-profile/") for r in node_roles),
        f"arn:aws:iam::{account}:instance-profile/ops-*",
    ]
    assert deploy["ManageGitHubOidcProvider"]["Resource"] == (
        f"arn:aws:iam::{account}:oidc-provider/{HOST}"
    )
    passing = deploy["PassInstanceRolesToEc2"]
    assert passing["Resource"] == [*node_roles, f"arn:aws:iam::{account}:role/ops-*"]
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}


def test_deploy_role_patterns_cover_every_role_and_profile_of_the_program(
    deployment: Deployment,
) -> None:
    """Pulumi names each role and profile `<logical name>-<7 hex>`: the patterns above
    match every one this program registers, and nothing else of IAM is registered."""
    names = iam_names(load_stack(deployment.stack).regions)
    for typ, kind in ((ROLE, "role"), ("aws:iam/instanceProfile:InstanceProfile",
                                       "instance-profile")):  # fmt: skip
        registered = deployment.of_type(typ)
        assert registered
        for resource in registered:
            auto_name = f"{resource.name}-abcdef1"
            assert any(fnmatch.fnmatchcase(auto_name, p) for p in names[kind]), resource.name
    iam_types = {r.typ for r in deployment.resources if r.typ.startswith("aws:iam/")}
    assert iam_types == {ROLE, ROLE_POLICY, OIDC, "aws:iam/instanceProfile:InstanceProfile"}


def test_lifecycle_role_has_the_ops_permissions(deployment: Deployment) -> None:
    ops = named(deployment, ROLE_POLICY, "ops").inputs["policy"]
    assert (
        named(deployment, ROLE_POLICY, f"ci-{deployment.stack}-lifecycle").inputs["policy"] == ops
    )


def test_an_existing_oidc_provider_is_used_by_arn() -> None:
    arn = "arn:aws:iam::111111111111:oidc-provider/token.actions.githubusercontent.com"
    deployment = deploy("staging", with_secrets("staging", {"idra:githubOidcProviderArn": arn}))
    assert not deployment.of_type(OIDC)
    for role in [r for r in deployment.of_type(ROLE) if r.name.startswith("ci-")]:
        assert trust(role)[0]["Principal"] == {"Federated": arn}, role.name


def test_no_repository_no_ci_role() -> None:
    deployment = deploy("staging", with_secrets("staging", {"idra:githubRepository": None}))
    assert not deployment.of_type(OIDC)
    assert not [r.name for r in deployment.of_type(ROLE) if r.name.startswith("ci-")]


def test_private_keys_are_never_replicated(deployment: Deployment) -> None:
    home = load_stack(deployment.stack).regions[0]
    for name in PRIVATE_KEYS:
        secret = named(deployment, SECRET, name.lower().replace("_", "-"))
        assert secret.region == home, secret.name
        assert not secret.inputs.get("replicas"), secret.name


def test_private_keys_live_in_the_control_plane_region() -> None:
    config = with_secrets("production", {"idra:controlPlaneRegion": "us-east-1"})
    deployment = deploy("production", config)
    for name in PRIVATE_KEYS:
        label = name.lower().replace("_", "-")
        secret = named(deployment, SECRET, label)
        assert secret.region == "us-east-1", secret.name
        assert secret.inputs["kmsKeyId"] == deployment.outputs["kmsKeyArns"]["us-east-1"]
        assert named(deployment, SECRET_POLICY, label).region == "us-east-1", label
    assert named(deployment, SECRET, "node-token").region == "eu-central-1"


def test_control_plane_region_must_be_a_stack_region() -> None:
    config = with_secrets("staging", {"idra:controlPlaneRegion": "us-west-2"})
    with pytest.raises(Exception, match=r"idra:controlPlaneRegion: us-west-2 is not in regions"):
        deploy("staging", config)


def test_private_keys_deny_every_reader_but_the_control_plane() -> None:
    reader = "arn:aws:iam::111111111111:role/idra-control-plane"
    config = with_secrets("staging", {"idra:controlPlaneRoleArns": json.dumps([reader])})
    deployment = deploy("staging", config)
    deploy_role = named(deployment, ROLE, "ci-staging").state["arn"]
    for name in PRIVATE_KEYS:
        label = name.lower().replace("_", "-")
        policy = named(deployment, SECRET_POLICY, label)
        assert policy.inputs["secretArn"] == named(deployment, SECRET, label).state["arn"]
        assert policy.inputs["blockPublicPolicy"] is True
        (deny,) = json.loads(policy.inputs["policy"])["Statement"]
        assert (deny["Effect"], deny["Principal"], deny["Action"]) == (
            "Deny", "*", "secretsmanager:GetSecretValue"
        ), label  # fmt: skip
        # The control plane, the CI deploy role and the deployer (who writes the value).
        assert deny["Condition"] == {
            "ArnNotEquals": {
                "aws:PrincipalArn": sorted(
                    [reader, deploy_role, "arn:aws:iam::111111111111:role/deploy"]
                )
            }
        }, label
    assert len(deployment.of_type(SECRET_POLICY)) == 2  # NODE_TOKEN: the nodes read it
