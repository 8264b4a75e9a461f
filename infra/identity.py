"""Per region: the nodes' IAM role. It may read its environment's NODE_TOKEN in its own
region (and decrypt it only through Secrets Manager) and complete (or extend) lifecycle
actions of its own auto-scaling group. Nothing else."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from idra.config import StackConfig
from infra.stack_secrets import EnvironmentSecrets

ASSUME_BY_EC2 = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def _document(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def token_policy(region: str, secret_arn: str, key_arn: str) -> str:
    """Read one secret; decrypt with one key, only for that secret, only via Secrets Manager."""
    return _document(
        {
            "Sid": "ReadNodeToken",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": secret_arn,
        },
        {
            "Sid": "DecryptNodeTokenViaSecretsManager",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": key_arn,
            "Condition": {
                "StringEquals": {
                    "kms:ViaService": f"secretsmanager.{region}.amazonaws.com",
                    "kms:EncryptionContext:SecretARN": secret_arn,
                }
            },
        },
    )


def group_arn_pattern(region: str, account: str, asg_name: str) -> str:
    """The group's ARN with its generated id as ``*``: known before the group exists."""
    return (
        f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{asg_name}"
    )


def lifecycle_policy(group_arn: str) -> str:
    return _document(
        {
            "Sid": "OwnLifecycleActions",
            "Effect": "Allow",
            "Action": [
                "autoscaling:CompleteLifecycleAction",
                "autoscaling:RecordLifecycleActionHeartbeat",
            ],
            "Resource": group_arn,
        }
    )


class NodeIdentity:
    """The role and instance profile of one region's nodes, and its two policies."""

    def __init__(
        self,
        cfg: StackConfig,
        region: str,
        secrets: EnvironmentSecrets,
        provider: aws.Provider,
    ) -> None:
        opts = pulumi.ResourceOptions(provider=provider)
        self.role = aws.iam.Role(
            f"{region}-node",
            description=f"IDRA {cfg.stack} exit nodes in {region}",
            assume_role_policy=ASSUME_BY_EC2,
            max_session_duration=3600,
            opts=opts,
        )
        token = aws.iam.RolePolicy(
            f"{region}-node-token",
            role=self.role.id,
            policy=pulumi.Output.all(
                secrets.arn_in("NODE_TOKEN", region), secrets.key_arns[region]
            ).apply(lambda arns: token_policy(region, *arns)),
            opts=opts,
        )
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOptions(provider=provider))
        lifecycle = aws.iam.RolePolicy(
            f"{region}-node-lifecycle",
            role=self.role.id,
            policy=account.account_id.apply(
                lambda account_id: lifecycle_policy(
                    group_arn_pattern(region, account_id, cfg.asg_name(region))
                )
            ),
            opts=opts,
        )
        self.policies: list[pulumi.Resource] = [token, lifecycle]
        self.profile = aws.iam.InstanceProfile(f"{region}-node", role=self.role.name, opts=opts)
