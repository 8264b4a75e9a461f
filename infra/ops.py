"""The ops service (``idra ops run``): a one-instance auto-scaling group in the stack's
primary region, built like the nodes — the pinned Alpine image, IMDSv2 with hop limit 1,
an encrypted root made read-only at boot, state on tmpfs, SSH closed (no ingress at
all) — running the pinned ``idra`` zipapp (``idra:opsUrl``/``opsSha256``) under
OpenRC's supervise-daemon. Its operator token is a generated Secrets Manager secret only
the ops role may read. Created only when the stack pins an ops artifact."""

from __future__ import annotations

import base64

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from idra.config import StackConfig
from idra.render import render_ops_files, sent_user_data
from infra.fleet import hardened, image
from infra.identity import token_policy
from infra.roles import Roles
from infra.settings import tags
from infra.stack_secrets import RECOVERY_DAYS, TOKEN_LENGTH, EnvironmentSecrets


def ops_user_data(cfg: StackConfig) -> str:
    """Base64 of the gzipped ``ops-user-data.yaml`` (above the budget: the preview stops)."""
    text = render_ops_files(cfg)["ops-user-data.yaml"]
    return base64.b64encode(sent_user_data(text, f"{cfg.primary_region} ops")).decode()


def ops_service(
    cfg: StackConfig,
    roles: Roles,
    secrets: EnvironmentSecrets,
    vpc_id: pulumi.Input[str],
    subnet_ids: list[pulumi.Input[str]],
    provider: aws.Provider,
) -> aws.autoscaling.Group | None:
    if not cfg.ops_url:
        return None
    region = cfg.primary_region
    opts = pulumi.ResourceOptions(provider=provider)
    secret = aws.secretsmanager.Secret(
        "operator-token",
        name=cfg.secret_name("OPERATOR_TOKEN"),
        description=f"IDRA {cfg.stack} OPERATOR_TOKEN (the ops service's)",
        kms_key_id=secrets.key_arns[region],
        recovery_window_in_days=RECOVERY_DAYS,
        opts=pulumi.ResourceOptions(provider=provider, protect=True, delete_before_replace=True),
    )
    value = random.RandomPassword("operator-token", length=TOKEN_LENGTH, special=False)
    version = aws.secretsmanager.SecretVersion(
        "operator-token",
        secret_id=secret.id,
        secret_string=pulumi.Output.secret(value.result),
        opts=opts,
    )
    read = aws.iam.RolePolicy(
        "ops-token",
        role=roles.ops_role.id,
        policy=pulumi.Output.all(secret.arn, secrets.key_arns[region]).apply(
            lambda arns: token_policy(region, *arns)
        ),
        opts=opts,
    )
    group = aws.ec2.SecurityGroup(
        "ops",
        description=f"IDRA {cfg.stack} ops service: nothing in",
        vpc_id=vpc_id,
        ingress=[],
        egress=[
            aws.ec2.SecurityGroupEgressArgs(
                protocol="-1",
                from_port=0,
                to_port=0,
                cidr_blocks=["0.0.0.0/0"],
                ipv6_cidr_blocks=["::/0"],
            )
        ],
        opts=opts,
    )
    pinned = image(cfg, region, provider)
    instance_tags = tags(cfg, role="ops", Name=cfg.ops_asg_name)
    template = aws.ec2.LaunchTemplate(
        "ops",
        description=f"IDRA {cfg.stack} ops service",
        image_id=pinned.id,
        instance_type=cfg.ops_instance_type,
        user_data=ops_user_data(cfg),
        update_default_version=True,
        iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(
            arn=roles.ops_profile.arn
        ),
        **hardened(cfg, pinned),
        network_interfaces=[
            aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                device_index=0,
                associate_public_ip_address="true",  # reaches the AWS APIs and DNSBLs
                security_groups=[group.id],
                delete_on_termination="true",
            )
        ],
        tag_specifications=[
            aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=instance_tags)
            for kind in ("instance", "volume", "network-interface")
        ],
        opts=opts,
    )
    return aws.autoscaling.Group(
        "ops",
        name=cfg.ops_asg_name,
        min_size=1,
        max_size=1,
        desired_capacity=1,
        vpc_zone_identifiers=subnet_ids,
        health_check_type="EC2",
        wait_for_capacity_timeout="0",
        launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
            id=template.id, version=template.latest_version.apply(str)
        ),
        tags=[
            aws.autoscaling.GroupTagArgs(key=key, value=value, propagate_at_launch=True)
            for key, value in instance_tags.items()
        ],
        opts=pulumi.ResourceOptions(
            provider=provider, depends_on=[version, read], delete_before_replace=True
        ),
    )
