"""Per region: the launch template and the auto-scaling group of exit nodes.

Nodes leave only through drain: new instances are protected from scale-in (target
tracking lowers desired capacity; ``idra scale-in`` drains the excess), a termination
lifecycle hook gives the agent the whole drain,
and no instance refresh replaces serving nodes (``idra rollout`` does, through drain).
Nodes count only once serving: a launch hook holds each new instance until its agent has
registered and applied its first sync, and abandons it otherwise.
"""

from __future__ import annotations

import base64

import pulumi
import pulumi_aws as aws

from idra.config import LAUNCH_HOOK, LIFECYCLE_HOOK, StackConfig
from idra.render import render_node_files, sent_user_data
from infra.settings import tags


def image(
    cfg: StackConfig, region: str, provider: aws.Provider
) -> pulumi.Output[aws.ec2.GetAmiResult]:
    """The region's pinned image (its id and root device come from EC2): the id given in
    ``amiIds``, else the one image of the Alpine owner with exactly the pinned name. No
    ``most_recent``: a newer image never matches, and two matches fail the preview instead
    of picking one. ``include_deprecated``: Alpine deprecates its images after a while; the
    pinned one must still be found (AWS hides deprecated images from lookups otherwise)."""
    if region in cfg.ami_ids:
        filters = [aws.ec2.GetAmiFilterArgs(name="image-id", values=[cfg.ami_ids[region]])]
        owners = None
    else:
        filters = [
            aws.ec2.GetAmiFilterArgs(name="name", values=[cfg.ami_name]),
            aws.ec2.GetAmiFilterArgs(name="architecture", values=[cfg.architecture]),
            aws.ec2.GetAmiFilterArgs(name="state", values=["available"]),
        ]
        owners = [cfg.ami_owner]
    return aws.ec2.get_ami_output(
        owners=owners,
        most_recent=False,
        include_deprecated=True,
        filters=filters,
        opts=pulumi.InvokeOptions(provider=provider),
    )


def hardened(cfg: StackConfig, pinned: pulumi.Output[aws.ec2.GetAmiResult]) -> dict[str, object]:
    """The launch-template settings every instance of the stack shares (nodes and the ops
    service): IMDSv2 required with hop limit 1 (no container or forwarded packet reaches
    the credentials), no instance tags in the metadata, an encrypted gp3 root on the pinned
    image's own root device."""
    return {
        "metadata_options": aws.ec2.LaunchTemplateMetadataOptionsArgs(
            http_endpoint="enabled",
            http_tokens="required",
            http_put_response_hop_limit=1,
            instance_metadata_tags="disabled",
        ),
        "block_device_mappings": [
            aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name=pinned.root_device_name,
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    volume_size=cfg.root_volume_gb,
                    volume_type="gp3",
                    encrypted="true",
                    delete_on_termination="true",
                ),
            )
        ],
    }


def user_data(cfg: StackConfig, region: str) -> str:
    """Base64 of the same ``user-data.yaml`` that ``idra render`` writes, as sent: gzipped,
    within the budget (above it, the preview stops)."""
    text = render_node_files(cfg, region)["user-data.yaml"]
    return base64.b64encode(sent_user_data(text, region)).decode()


def launch_template(
    cfg: StackConfig,
    region: str,
    security_group_id: pulumi.Input[str],
    instance_profile_arn: pulumi.Input[str],
    provider: aws.Provider,
) -> aws.ec2.LaunchTemplate:
    # The provider's default_tags reach neither the instances nor their volumes and
    # interfaces: those get the stack's tags here (the reaper checks them on instances).
    instance_tags = tags(cfg, Name=f"idra-{cfg.stack}-{region}")
    pinned = image(cfg, region, provider)
    return aws.ec2.LaunchTemplate(
        f"{region}-node",
        description=f"IDRA {cfg.stack} exit node",
        image_id=pinned.id,
        instance_type=cfg.instance_types[0],
        user_data=user_data(cfg, region),
        update_default_version=True,
        iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=instance_profile_arn),
        **hardened(cfg, pinned),
        network_interfaces=[
            aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                device_index=0,
                associate_public_ip_address="true",
                ipv6_address_count=1,
                security_groups=[security_group_id],
                delete_on_termination="true",
            )
        ],
        monitoring=aws.ec2.LaunchTemplateMonitoringArgs(enabled=True),  # 1-minute metrics
        tag_specifications=[
            aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=instance_tags)
            for kind in ("instance", "volume", "network-interface")
        ],
        opts=pulumi.ResourceOptions(provider=provider),
    )


def auto_scaling_group(
    cfg: StackConfig,
    region: str,
    template: aws.ec2.LaunchTemplate,
    subnet_ids: list[pulumi.Input[str]],
    provider: aws.Provider,
    depends_on: list[pulumi.Resource],
) -> aws.autoscaling.Group:
    """``depends_on``: what a booting node needs (its token's secret version, its role's
    policies), so no instance starts before it can fetch the token and complete hooks."""
    opts = pulumi.ResourceOptions(provider=provider)
    group = aws.autoscaling.Group(
        f"{region}-nodes",
        name=cfg.asg_name(region),  # fixed: user-data names it before it exists
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        vpc_zone_identifiers=subnet_ids,
        health_check_type="EC2",
        health_check_grace_period=cfg.health_check_grace_seconds,
        protect_from_scale_in=True,
        # The readiness hook is the gate, not Pulumi. The provider would otherwise wait up to
        # 10 minutes for min_size InService instances, while each new instance may spend
        # the launch hook's whole timeout plus its boot in Pending:Wait first: the
        # first `up` of a stack or region would fail, and the hooks and policies made after
        # the group would be left out. "0" skips the provider's capacity wait altogether.
        wait_for_capacity_timeout="0",
        # A failed launch (an abandoned readiness hook) is the group's business: it launches
        # another; it must not fail `pulumi up`.
        ignore_failed_scaling_activities=True,
        default_instance_warmup=cfg.instance_warmup_seconds,
        # For the "InService below desired" alarm (infra/alarms.py).
        enabled_metrics=["GroupDesiredCapacity", "GroupInServiceInstances"],
        metrics_granularity="1Minute",
        mixed_instances_policy=aws.autoscaling.GroupMixedInstancesPolicyArgs(
            launch_template=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateArgs(
                launch_template_specification=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecificationArgs(
                    launch_template_id=template.id,
                    version=template.latest_version.apply(str),
                ),
                overrides=[
                    aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateOverrideArgs(
                        instance_type=instance_type
                    )
                    for instance_type in cfg.instance_types
                ],
            ),
        ),
        # Part of the group from its creation, so even the first instances wait for it.
        initial_lifecycle_hooks=[
            aws.autoscaling.GroupInitialLifecycleHookArgs(
                name=LAUNCH_HOOK,
                lifecycle_transition="autoscaling:EC2_INSTANCE_LAUNCHING",
                heartbeat_timeout=cfg.launch_hook_timeout_seconds,
                default_result="ABANDON",
            )
        ],
        # The AWS provider applies no default_tags to groups: the stack's tags, propagated.
        tags=[
            aws.autoscaling.GroupTagArgs(key=key, value=value, propagate_at_launch=True)
            for key, value in tags(cfg, Name=f"idra-{cfg.stack}-{region}").items()
        ],
        opts=pulumi.ResourceOptions(provider=provider, depends_on=depends_on),
    )
    # The same hook as its own resource too: `initial_lifecycle_hooks` only acts when the
    # group is created, this one applies later changes (and adds it to an older group).
    # Hook names are fixed: a replaced hook must go before its successor takes the name.
    hook_opts = pulumi.ResourceOptions(provider=provider, delete_before_replace=True)
    aws.autoscaling.LifecycleHook(
        f"{region}-ready",
        name=LAUNCH_HOOK,
        autoscaling_group_name=group.name,
        lifecycle_transition="autoscaling:EC2_INSTANCE_LAUNCHING",
        heartbeat_timeout=cfg.launch_hook_timeout_seconds,
        default_result="ABANDON",
        opts=hook_opts,
    )
    aws.autoscaling.LifecycleHook(
        f"{region}-drain",
        name=LIFECYCLE_HOOK,
        autoscaling_group_name=group.name,
        lifecycle_transition="autoscaling:EC2_INSTANCE_TERMINATING",
        heartbeat_timeout=cfg.termination_hook_timeout_seconds,
        default_result="CONTINUE",
        opts=hook_opts,
    )
    _scale_on_load(cfg, region, group, opts)
    return group


def _scale_on_load(
    cfg: StackConfig, region: str, group: aws.autoscaling.Group, opts: pulumi.ResourceOptions
) -> None:
    """Target tracking both ways. Scale-in only lowers desired capacity: every instance is
    protected from scale-in, so AWS terminates none; ``idra scale-in`` drains the excess
    (emptiest first) and the reaper terminates it once empty, without a replacement."""
    targets = {"cpu": ("ASGAverageCPUUtilization", cfg.scale_cpu_target)}
    if cfg.scale_network_out_target_mbps:
        bytes_per_minute = cfg.scale_network_out_target_mbps * 1e6 / 8 * 60
        targets["network-out"] = ("ASGAverageNetworkOut", bytes_per_minute)
    for label, (metric, target) in targets.items():
        aws.autoscaling.Policy(
            f"{region}-scale-{label}",
            autoscaling_group_name=group.name,
            policy_type="TargetTrackingScaling",
            target_tracking_configuration=aws.autoscaling.PolicyTargetTrackingConfigurationArgs(
                predefined_metric_specification=aws.autoscaling.PolicyTargetTrackingConfigurationPredefinedMetricSpecificationArgs(
                    predefined_metric_type=metric
                ),
                target_value=target,
                disable_scale_in=False,
            ),
            opts=opts,
        )
