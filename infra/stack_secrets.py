"""Per environment: a KMS key (replicated to every region of the stack) and the three
Secrets Manager secrets, encrypted with it: ``NODE_TOKEN`` replicated to every node
region, the control plane's two private keys only in its region
(``idra:controlPlaneRegion``), behind resource policies (``infra/roles.py``).

Keys, replica keys and secrets are ``protect``ed: Pulumi refuses to delete or replace
them until an operator lifts the protection on purpose (a deleted key makes every secret
unreadable; a deleted secret keeps its fixed name for the recovery window). Resources
with a fixed name (secrets, aliases) are deleted before their replacement is created,
since both cannot hold the name at once."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.settings import SECRETS, Settings

RECOVERY_DAYS = 7
NODE_SECRETS = ("NODE_TOKEN",)  # replicated to every node region; the rest stay home
TOKEN_LENGTH = 48


@dataclass(frozen=True)
class EnvironmentSecrets:
    key_arns: dict[str, pulumi.Output[str]]  # region -> the KMS key (primary or replica)
    secret_arns: dict[str, pulumi.Output[str]]  # secret name -> ARN in the primary region
    versions: dict[str, aws.secretsmanager.SecretVersion]  # secret name -> its value
    secrets: dict[str, aws.secretsmanager.Secret]  # secret name -> the secret

    def arn_in(self, name: str, region: str) -> pulumi.Output[str]:
        """The ARN of a secret's copy in ``region`` (replicas keep the primary's suffix)."""
        primary = self.secret_arns[name]
        return primary.apply(lambda arn: _in_region(arn, region))


def _in_region(arn: str, region: str) -> str:
    parts = arn.split(":")
    parts[3] = region
    return ":".join(parts)


def environment_secrets(
    settings: Settings, providers: dict[str, aws.Provider]
) -> EnvironmentSecrets:
    """The key lives in the first region listed; every other region holds replicas."""
    cfg = settings.cfg
    primary, *replicas = cfg.regions
    key = aws.kms.Key(
        "secrets-key",
        description=f"IDRA {cfg.stack}: Secrets Manager secrets",
        enable_key_rotation=True,
        deletion_window_in_days=30,
        multi_region=True,
        opts=pulumi.ResourceOptions(provider=providers[primary], protect=True),
    )
    key_arns = {primary: key.arn}
    for region in replicas:
        replica = aws.kms.ReplicaKey(
            f"{region}-secrets-key",
            description=f"IDRA {cfg.stack}: Secrets Manager secrets",
            primary_key_arn=key.arn,
            deletion_window_in_days=30,
            opts=pulumi.ResourceOptions(provider=providers[region], protect=True),
        )
        key_arns[region] = replica.arn
    for region, arn in key_arns.items():
        aws.kms.Alias(
            f"{region}-secrets-key",
            name=f"alias/idra-{cfg.stack}-secrets",
            target_key_id=arn,
            opts=pulumi.ResourceOptions(provider=providers[region], delete_before_replace=True),
        )

    values = dict(settings.secrets)
    if "NODE_TOKEN" not in values:
        values["NODE_TOKEN"] = random.RandomPassword(
            "node-token", length=TOKEN_LENGTH, special=False
        ).result
    secret_arns, versions, secrets = {}, {}, {}
    for name in SECRETS:
        label = name.lower().replace("_", "-")
        # NODE_TOKEN is read by every node region; the two private keys only by the
        # control plane, so they live in its region alone and are never replicated.
        home = primary if name in NODE_SECRETS else cfg.secrets_region
        copies = replicas if name in NODE_SECRETS else []
        secret = aws.secretsmanager.Secret(
            label,
            name=cfg.secret_name(name),
            description=f"IDRA {cfg.stack} {name}",
            kms_key_id=key_arns[home],
            recovery_window_in_days=RECOVERY_DAYS,
            replicas=[
                aws.secretsmanager.SecretReplicaArgs(region=region, kms_key_id=key_arns[region])
                for region in copies
            ],
            opts=pulumi.ResourceOptions(
                provider=providers[home], protect=True, delete_before_replace=True
            ),
        )
        versions[name] = aws.secretsmanager.SecretVersion(
            label,
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(values[name]),
            opts=pulumi.ResourceOptions(provider=providers[home]),
        )
        secret_arns[name], secrets[name] = secret.arn, secret
    return EnvironmentSecrets(
        key_arns=key_arns, secret_arns=secret_arns, versions=versions, secrets=secrets
    )
