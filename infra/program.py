"""The whole environment: per-environment secrets, then each region's fleet."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from idra.config import ConfigError, StackConfig
from infra import settings as stack_settings
from infra.alarms import alarms
from infra.fleet import auto_scaling_group, launch_template
from infra.identity import NodeIdentity
from infra.network import network
from infra.ops import ops_service
from infra.roles import environment_roles
from infra.security import security_group
from infra.stack_secrets import environment_secrets


def regional_provider(cfg: StackConfig, region: str) -> aws.Provider:
    """One region's provider: it refuses credentials of any account but the stack's
    (``idra:awsAccountId``) and tags every resource that takes tags."""
    return aws.Provider(
        f"aws-{region}",
        region=region,
        allowed_account_ids=[cfg.aws_account_id],
        default_tags=aws.ProviderDefaultTagsArgs(tags=stack_settings.tags(cfg)),
    )


def build(settings: stack_settings.Settings) -> dict[str, pulumi.Input[object]]:
    """Register every resource; return the stack outputs (no secret value among them)."""
    cfg = settings.cfg
    providers = {region: regional_provider(cfg, region) for region in cfg.regions}
    secrets = environment_secrets(settings, providers)
    roles = environment_roles(cfg, secrets, providers)
    asg_names, asg_arns, group_ids, nets = {}, {}, {}, {}
    for region, provider in providers.items():
        net = nets[region] = network(cfg, region, provider)
        group = security_group(cfg, region, net.vpc_id, provider)
        identity = NodeIdentity(cfg, region, secrets, provider)
        template = launch_template(cfg, region, group.id, identity.profile.arn, provider)
        needs = [secrets.versions["NODE_TOKEN"], *identity.policies]
        asg = auto_scaling_group(cfg, region, template, net.subnet_ids, provider, needs)
        asg_names[region], asg_arns[region], group_ids[region] = asg.name, asg.arn, group.id
    topics = alarms(cfg, providers)
    primary = nets[cfg.primary_region]
    ops = ops_service(cfg, roles, secrets, primary.vpc_id, primary.subnet_ids,
                      providers[cfg.primary_region])  # fmt: skip
    return {
        "alarmTopicArns": {region: topic.arn for region, topic in topics.items()},
        "asgNames": asg_names,
        "asgArns": asg_arns,
        "securityGroupIds": group_ids,
        "secretArns": secrets.secret_arns,
        "kmsKeyArns": secrets.key_arns,
        "opsRoleArn": roles.ops_role.arn,
        "opsGroupName": ops.name if ops else "",
        "ciRoleArns": {env: role.arn for env, role in roles.ci_roles.items()},
    }


def main() -> dict[str, pulumi.Input[object]]:
    """Entry point of ``pulumi up``: a bad stack value stops it with one clear line."""
    try:
        outputs = build(stack_settings.load())
    except ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
    for name, value in outputs.items():
        pulumi.export(name, value)
    return outputs
