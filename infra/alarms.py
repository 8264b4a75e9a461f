"""Alarms that wake someone: per region an SNS topic (subscribers from
``idra:alarmEmails``), the group's InService-below-desired alarm (which also covers
abandoned readiness, see LAUNCH_UNSUCCESSFUL) and an EventBridge rule on unsuccessful
launches; in the primary region the ops loop's alarms (silent, drains
overdue, identity refusals, canary listings) on the metrics it puts each pass.

CloudWatch alarms and EventBridge rules notify topics of their own region only, hence a
topic per region."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from idra.config import OPS_NAMESPACE, StackConfig
from idra.lifecycle import metrics

BELOW_DESIRED_MINUTES = 15
# The Amazon EC2 Auto Scaling event reference
# (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-event-reference.html)
# documents this event for a launch that failed ("Unsuccessful scaling events"), and
# lifecycle-hook events only when an instance *enters* a wait state; it documents no event
# for a launch lifecycle action that ends in ABANDON (our readiness hook timing out). So
# the rule matches failed launches only, and abandoned readiness is caught by the
# InService-below-desired alarm: an abandoned instance never reaches InService while the
# desired capacity stays, so InService < desired for as long as readiness keeps failing.
EVENT_REFERENCE = (
    "https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-event-reference.html"
)
LAUNCH_UNSUCCESSFUL = "EC2 Instance Launch Unsuccessful"


def topic_policy(topic_arn: str, account: str, rule_arn: str) -> str:
    """The account may use its topic; EventBridge may publish only for our rule,
    CloudWatch only for this account's alarms."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Owner",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": ["sns:Publish", "sns:Subscribe", "sns:GetTopicAttributes"],
                    "Resource": topic_arn,
                },
                {
                    "Sid": "LaunchFailures",
                    "Effect": "Allow",
                    "Principal": {"Service": "events.amazonaws.com"},
                    "Action": "sns:Publish",
                    "Resource": topic_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
                },
                {
                    "Sid": "Alarms",
                    "Effect": "Allow",
                    "Principal": {"Service": "cloudwatch.amazonaws.com"},
                    "Action": "sns:Publish",
                    "Resource": topic_arn,
                    "Condition": {"StringEquals": {"aws:SourceAccount": account}},
                },
            ],
        }
    )


def alarms(cfg: StackConfig, providers: dict[str, aws.Provider]) -> dict[str, aws.sns.Topic]:
    """Register the topics, the rules and the alarms; return the topic of each region."""
    topics = {}
    for region, provider in providers.items():
        opts = pulumi.ResourceOptions(provider=provider)
        topic = aws.sns.Topic(
            f"{region}-alarms",
            name=f"idra-{cfg.stack}-alarms",
            opts=pulumi.ResourceOptions(provider=provider, delete_before_replace=True),
        )
        for index, email in enumerate(cfg.alarm_emails):
            aws.sns.TopicSubscription(
                f"{region}-alarms-{index}",
                topic=topic.arn,
                protocol="email",
                endpoint=email,
                opts=opts,
            )
        rule = aws.cloudwatch.EventRule(
            f"{region}-launch-failed",
            description=f"IDRA {cfg.stack}: a node launch failed",
            event_pattern=json.dumps(
                {
                    "source": ["aws.autoscaling"],
                    "detail-type": [LAUNCH_UNSUCCESSFUL],
                    "detail": {"AutoScalingGroupName": [cfg.asg_name(region)]},
                }
            ),
            opts=opts,
        )
        aws.cloudwatch.EventTarget(
            f"{region}-launch-failed", rule=rule.name, arn=topic.arn, opts=opts
        )
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOptions(provider=provider))
        aws.sns.TopicPolicy(
            f"{region}-alarms",
            arn=topic.arn,
            policy=pulumi.Output.all(topic.arn, account.account_id, rule.arn).apply(
                lambda a: topic_policy(*a)
            ),
            opts=opts,
        )
        _below_desired(cfg, region, topic, opts)
        topics[region] = topic
    _ops_alarms(cfg, topics[cfg.primary_region], providers[cfg.primary_region])
    return topics


def _below_desired(
    cfg: StackConfig, region: str, topic: aws.sns.Topic, opts: pulumi.ResourceOptions
) -> None:
    """Fewer instances in service than desired, every minute for 15 minutes: a group that
    cannot launch, or whose new nodes never pass readiness (abandoned by the launch hook,
    for which AWS documents no event)."""

    def group_metric(query_id: str, name: str) -> aws.cloudwatch.MetricAlarmMetricQueryArgs:
        return aws.cloudwatch.MetricAlarmMetricQueryArgs(
            id=query_id,
            metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
                namespace="AWS/AutoScaling",
                metric_name=name,
                dimensions={"AutoScalingGroupName": cfg.asg_name(region)},
                period=60,
                stat="Minimum",
            ),
        )

    aws.cloudwatch.MetricAlarm(
        f"{region}-below-desired",
        alarm_description=f"IDRA {cfg.stack} {region}: InService below desired for 15 minutes",
        metric_queries=[
            group_metric("desired", "GroupDesiredCapacity"),
            group_metric("inservice", "GroupInServiceInstances"),
            aws.cloudwatch.MetricAlarmMetricQueryArgs(
                id="missing", expression="desired - inservice", return_data=True
            ),
        ],
        comparison_operator="GreaterThanThreshold",
        threshold=0,
        evaluation_periods=BELOW_DESIRED_MINUTES,
        datapoints_to_alarm=BELOW_DESIRED_MINUTES,
        treat_missing_data="missing",
        alarm_actions=[topic.arn],
        ok_actions=[topic.arn],
        opts=opts,
    )


def _ops_alarms(cfg: StackConfig, topic: aws.sns.Topic, provider: aws.Provider) -> None:
    """On the metrics ``idra ops run`` puts each pass (its tick: the shortest interval)."""
    opts = pulumi.ResourceOptions(provider=provider)
    dimensions = {"Stack": cfg.stack}
    period = cfg.ops_tick_seconds
    aws.cloudwatch.MetricAlarm(
        "ops-silent",
        alarm_description=f"IDRA {cfg.stack}: the ops loop put no heartbeat for two intervals",
        namespace=OPS_NAMESPACE,
        metric_name=metrics.HEARTBEAT,
        dimensions=dimensions,
        statistic="Sum",
        period=period,
        evaluation_periods=2,
        datapoints_to_alarm=2,
        comparison_operator="LessThanThreshold",
        threshold=1,
        treat_missing_data="breaching",  # silence is the failure
        alarm_actions=[topic.arn],
        ok_actions=[topic.arn],
        opts=opts,
    )
    for label, metric, what in (
        ("drain-overdue", metrics.DRAINS_OVERDUE, "a node drains past maxDrainSeconds"),
        ("identity-refused", metrics.IDENTITY_REFUSALS, "an identity was refused"),
        ("canary-listed", metrics.CANARY_LISTED, "the canary found a node listed"),
    ):
        aws.cloudwatch.MetricAlarm(
            f"ops-{label}",
            alarm_description=f"IDRA {cfg.stack}: {what}",
            namespace=OPS_NAMESPACE,
            metric_name=metric,
            dimensions=dimensions,
            statistic="Maximum",
            period=period,
            evaluation_periods=1,
            comparison_operator="GreaterThanThreshold",
            threshold=0,
            treat_missing_data="notBreaching",  # the loop's silence has its own alarm
            alarm_actions=[topic.arn],
            opts=opts,
        )
