"""Per environment: the roles that act on the stack, as code.

- the **ops role** (the lifecycle service ``idra ops run``, and the break-glass workflow):
  ``Describe*`` where AWS allows no narrower resource; terminate, complete lifecycle
  actions and set desired capacity only on the stack's own node groups; metrics only in
  the ``IDRA/Ops`` namespace (its lease is held in the control plane, not in AWS);
- the **GitHub OIDC provider** (or the account's, by ARN) and the **CI roles**: each
  trusts one GitHub environment of one repository (``aud`` and ``sub`` pinned);
- the **resource policies** of the control plane's two private keys: nobody but the
  control plane's roles (and the deployer writing them) may read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from idra.config import GITHUB_OIDC_HOST, OPS_NAMESPACE, StackConfig
from infra.identity import group_arn_pattern
from infra.stack_secrets import EnvironmentSecrets

# Reads AWS grants on "*" only (no resource-level permissions for these actions).
OPS_DESCRIBE = [
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeLifecycleHooks",
    "autoscaling:DescribeScalingActivities",
    "ec2:DescribeInstances",
    "ec2:DescribeLaunchTemplates",
]
OPS_ACT = [
    "autoscaling:TerminateInstanceInAutoScalingGroup",
    "autoscaling:CompleteLifecycleAction",
    "autoscaling:SetDesiredCapacity",
]
# What `pulumi preview` reads (invokes and, with --refresh, every resource): no secret
# value, no decrypt, no write.
PREVIEW_READ = [
    "autoscaling:Describe*",
    "cloudwatch:Describe*",
    "cloudwatch:GetMetricData",
    "cloudwatch:ListTagsForResource",
    "ec2:Describe*",
    "ec2:GetLaunchTemplateData",
    "events:Describe*",
    "events:ListTagsForResource",
    "events:ListTargetsByRule",
    "iam:GetInstanceProfile",
    "iam:GetOpenIDConnectProvider",
    "iam:GetRole",
    "iam:GetRolePolicy",
    "iam:ListAttachedRolePolicies",
    "iam:ListRolePolicies",
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListAliases",
    "kms:ListResourceTags",
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetResourcePolicy",
    "sns:GetSubscriptionAttributes",
    "sns:GetTopicAttributes",
    "sns:ListTagsForResource",
]
# The services `pulumi up` manages. Secret values and decrypts only on named resources;
# IAM only on the roles, profiles and OIDC provider of this program (IAM_* below).
DEPLOY_MANAGE = [
    "autoscaling:*",
    "cloudwatch:*",
    "ec2:*",
    "events:*",
    "sns:*",
]
# IAM of `pulumi up`: the roles and their inline policies, the instance profiles, the
# GitHub OIDC provider. Pulumi names each role and profile `<logical name>-<7 hex>`.
IAM_ROLES = [
    "iam:CreateRole",
    "iam:DeleteRole",
    "iam:GetRole",
    "iam:UpdateRole",
    "iam:UpdateRoleDescription",
    "iam:UpdateAssumeRolePolicy",
    "iam:TagRole",
    "iam:UntagRole",
    "iam:ListRoleTags",
    "iam:PutRolePolicy",
    "iam:GetRolePolicy",
    "iam:DeleteRolePolicy",
    "iam:ListRolePolicies",
    "iam:ListAttachedRolePolicies",
    "iam:ListInstanceProfilesForRole",
]
IAM_PROFILES = [
    "iam:CreateInstanceProfile",
    "iam:DeleteInstanceProfile",
    "iam:GetInstanceProfile",
    "iam:AddRoleToInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile",
    "iam:TagInstanceProfile",
    "iam:UntagInstanceProfile",
    "iam:ListInstanceProfileTags",
]
IAM_OIDC = [
    "iam:CreateOpenIDConnectProvider",
    "iam:DeleteOpenIDConnectProvider",
    "iam:GetOpenIDConnectProvider",
    "iam:UpdateOpenIDConnectProviderThumbprint",
    "iam:AddClientIDToOpenIDConnectProvider",
    "iam:RemoveClientIDFromOpenIDConnectProvider",
    "iam:TagOpenIDConnectProvider",
    "iam:UntagOpenIDConnectProvider",
    "iam:ListOpenIDConnectProviderTags",
]
SECRET_MANAGE = [
    "secretsmanager:CreateSecret",
    "secretsmanager:DeleteSecret",
    "secretsmanager:DescribeSecret",
    "secretsmanager:UpdateSecret",
    "secretsmanager:PutSecretValue",
    "secretsmanager:TagResource",
    "secretsmanager:UntagResource",
    "secretsmanager:ReplicateSecretToRegions",
    "secretsmanager:RemoveRegionsFromReplication",
    "secretsmanager:GetResourcePolicy",
    "secretsmanager:PutResourcePolicy",
    "secretsmanager:DeleteResourcePolicy",
]
KMS_MANAGE = [
    "kms:CreateKey",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:UpdateAlias",
    "kms:DescribeKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListAliases",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:ReplicateKey",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateKeyDescription",
    "kms:GenerateDataKey",
]


def document(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def ops_policy(cfg: StackConfig, account: str) -> str:
    """What the lifecycle service may do, and nothing else."""
    return document(
        {"Sid": "Describe", "Effect": "Allow", "Action": OPS_DESCRIBE, "Resource": "*"},
        {
            "Sid": "ActOnOwnNodeGroups",
            "Effect": "Allow",
            "Action": OPS_ACT,
            "Resource": [group_arn_pattern(r, account, cfg.asg_name(r)) for r in cfg.regions],
        },
        {
            "Sid": "OwnMetrics",
            "Effect": "Allow",
            "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": {"StringEquals": {"cloudwatch:namespace": OPS_NAMESPACE}},
        },
    )


def github_trust(provider_arn: str, repository: str, environment: str) -> str:
    """Only tokens GitHub issued for ``environment`` of ``repository``, meant for STS."""
    return document(
        {
            "Effect": "Allow",
            "Principal": {"Federated": provider_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    f"{GITHUB_OIDC_HOST}:aud": "sts.amazonaws.com",
                    f"{GITHUB_OIDC_HOST}:sub": f"repo:{repository}:environment:{environment}",
                }
            },
        }
    )


def iam_names(regions: list[str]) -> dict[str, list[str]]:
    """Name patterns of the roles and instance profiles this program creates (logical name,
    then Pulumi's random suffix): the nodes' per region, the ops service's, the CI roles."""
    nodes = [f"{region}-node-*" for region in regions]
    return {"role": [*nodes, "ops-*", "ci-*"], "instance-profile": [*nodes, "ops-*"]}


def iam_statements(account: str, regions: list[str]) -> list[dict[str, Any]]:
    """What `pulumi up` may do in IAM: only on this program's roles, profiles and GitHub
    OIDC provider; pass only the instance roles, only to EC2."""
    names = iam_names(regions)
    arn = f"arn:aws:iam::{account}"
    roles = [f"{arn}:role/{name}" for name in names["role"]]
    instance_roles = [r for r in roles if not r.endswith("/ci-*")]
    return [
        {"Sid": "ManageOwnRoles", "Effect": "Allow", "Action": IAM_ROLES, "Resource": roles},
        {
            "Sid": "ManageOwnInstanceProfiles",
            "Effect": "Allow",
            "Action": IAM_PROFILES,
            "Resource": [f"{arn}:instance-profile/{name}" for name in names["instance-profile"]],
        },
        {
            "Sid": "ManageGitHubOidcProvider",
            "Effect": "Allow",
            "Action": IAM_OIDC,
            "Resource": f"{arn}:oidc-provider/{GITHUB_OIDC_HOST}",
        },
        {
            "Sid": "PassInstanceRolesToEc2",  # launch templates and groups name the profiles
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": instance_roles,
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        },
        {
            "Sid": "AutoScalingServiceLinkedRole",  # the account's first group creates it
            "Effect": "Allow",
            "Action": "iam:CreateServiceLinkedRole",
            "Resource": f"{arn}:role/aws-service-role/autoscaling.amazonaws.com/"
            "AWSServiceRoleForAutoScaling",
            "Condition": {"StringEquals": {"iam:AWSServiceName": "autoscaling.amazonaws.com"}},
        },
    ]


def deploy_policy(
    secret_arns: list[str], key_arns: list[str], account: str, stack: str, regions: list[str]
) -> str:
    return document(
        {"Sid": "Manage", "Effect": "Allow", "Action": DEPLOY_MANAGE, "Resource": "*"},
        *iam_statements(account, regions),
        {
            "Sid": "ManageOwnSecrets",
            "Effect": "Allow",
            "Action": SECRET_MANAGE,
            "Resource": f"arn:aws:secretsmanager:*:{account}:secret:idra/{stack}/*",
        },
        {
            "Sid": "ReadOwnSecrets",  # the provider reads a version back after writing it
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue", "kms:Decrypt"],
            "Resource": [*secret_arns, *key_arns],
        },
        {"Sid": "ManageKeys", "Effect": "Allow", "Action": KMS_MANAGE, "Resource": "*"},
    )


def principal_arn(caller_arn: str) -> str:
    """``aws:PrincipalArn`` of a caller: an assumed role's session becomes its role."""
    if ":assumed-role/" not in caller_arn:
        return caller_arn
    account = caller_arn.split(":")[4]
    role = caller_arn.split(":assumed-role/")[1].split("/")[0]
    return f"arn:aws:iam::{account}:role/{role}"


def private_key_policy(readers: list[str]) -> str:
    """Deny reading the secret to every principal but ``readers``."""
    return document(
        {
            "Sid": "OnlyTheControlPlaneReads",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": "*",
            "Condition": {"ArnNotEquals": {"aws:PrincipalArn": sorted(set(readers))}},
        }
    )


@dataclass(frozen=True)
class Roles:
    ops_role: aws.iam.Role
    ops_profile: aws.iam.InstanceProfile
    ci_roles: dict[str, aws.iam.Role]  # GitHub environment -> role


def environment_roles(
    cfg: StackConfig, secrets: EnvironmentSecrets, providers: dict[str, aws.Provider]
) -> Roles:
    provider = providers[cfg.primary_region]
    opts = pulumi.ResourceOptions(provider=provider)
    caller = aws.get_caller_identity_output(opts=pulumi.InvokeOptions(provider=provider))
    account = caller.account_id

    policy = account.apply(lambda a: ops_policy(cfg, a))
    ops_role = aws.iam.Role(
        "ops",
        description=f"IDRA {cfg.stack} lifecycle service (idra ops run)",
        assume_role_policy=document(
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ),
        max_session_duration=3600,
        opts=opts,
    )
    aws.iam.RolePolicy("ops", role=ops_role.id, policy=policy, opts=opts)
    profile = aws.iam.InstanceProfile("ops", role=ops_role.name, opts=opts)

    ci_roles = _ci_roles(cfg, secrets, account, policy, opts) if cfg.github_repository else {}
    readers = [*cfg.control_plane_role_arns, caller.arn.apply(principal_arn)]
    if cfg.stack in ci_roles:
        readers.append(ci_roles[cfg.stack].arn)
    for name in ("FIREBASE_PRIVATE_KEY", "BLINDED_SIGNING_PRIVATE_KEY"):
        aws.secretsmanager.SecretPolicy(
            name.lower().replace("_", "-"),
            secret_arn=secrets.secret_arns[name],
            policy=pulumi.Output.all(*readers).apply(private_key_policy),
            block_public_policy=True,
            opts=pulumi.ResourceOptions(provider=providers[cfg.secrets_region]),
        )
    return Roles(ops_role, profile, ci_roles)


def _ci_roles(
    cfg: StackConfig,
    secrets: EnvironmentSecrets,
    account: pulumi.Output[str],
    ops: pulumi.Output[str],
    opts: pulumi.ResourceOptions,
) -> dict[str, aws.iam.Role]:
    """One role per GitHub environment: preview (read-only), deploy, lifecycle (break-glass,
    the ops role's permissions)."""
    if cfg.github_oidc_provider_arn:
        provider_arn: pulumi.Input[str] = cfg.github_oidc_provider_arn
    else:
        provider_arn = aws.iam.OpenIdConnectProvider(
            "github",
            url=f"https://{GITHUB_OIDC_HOST}",
            client_id_lists=["sts.amazonaws.com"],
            opts=opts,
        ).arn
    regions = cfg.regions
    secret_arns = [secrets.arn_in("NODE_TOKEN", r) for r in regions] + [
        secrets.secret_arns[name]
        for name in ("FIREBASE_PRIVATE_KEY", "BLINDED_SIGNING_PRIVATE_KEY")
    ]
    deploy = pulumi.Output.all(
        pulumi.Output.all(*secret_arns), pulumi.Output.all(*secrets.key_arns.values()), account
    ).apply(lambda a: deploy_policy(a[0], a[1], a[2], cfg.stack, regions))
    preview = document(
        {"Sid": "ReadOnly", "Effect": "Allow", "Action": PREVIEW_READ, "Resource": "*"}
    )
    policies = {f"preview-{cfg.stack}": preview, cfg.stack: deploy, f"{cfg.stack}-lifecycle": ops}
    roles = {}
    for environment, role_policy in policies.items():
        label = f"ci-{environment}"
        role = aws.iam.Role(
            label,
            description=f"IDRA GitHub environment {environment} of {cfg.github_repository}",
            assume_role_policy=pulumi.Output.from_input(provider_arn).apply(
                lambda arn, env=environment: github_trust(arn, cfg.github_repository, env)
            ),
            max_session_duration=3600,
            opts=opts,
        )
        aws.iam.RolePolicy(label, role=role.id, policy=role_policy, opts=opts)
        roles[environment] = role
    return roles
