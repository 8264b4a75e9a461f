"""Alarms that wake someone: each resource and property, by name."""

from __future__ import annotations

import json

from idra.config import OPS_NAMESPACE, load_stack
from idra.lifecycle import metrics
from infra.alarms import EVENT_REFERENCE
from tests.infra.harness import ACCOUNTS, Deployment, Resource

TOPIC = "aws:sns/topic:Topic"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
TOPIC_POLICY = "aws:sns/topicPolicy:TopicPolicy"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
RULE = "aws:cloudwatch/eventRule:EventRule"
TARGET = "aws:cloudwatch/eventTarget:EventTarget"
ASG = "aws:autoscaling/group:Group"


def named(deployment: Deployment, typ: str, name: str) -> Resource:
    (found,) = [r for r in deployment.of_type(typ) if r.name == name]
    return found


def test_a_topic_per_region_with_the_configured_subscribers(deployment: Deployment) -> None:
    cfg = load_stack(deployment.stack)
    for region in cfg.regions:
        topic = named(deployment, TOPIC, f"{region}-alarms")
        assert topic.region == region and topic.inputs["name"] == f"idra-{cfg.stack}-alarms"
        subscriptions = [s for s in deployment.of_type(SUBSCRIPTION) if s.region == region]
        assert [(s.inputs["protocol"], s.inputs["endpoint"]) for s in subscriptions] == [
            ("email", email) for email in cfg.alarm_emails
        ], region
        assert all(s.inputs["topic"] == topic.state["arn"] for s in subscriptions), region
    assert deployment.outputs["alarmTopicArns"].keys() == set(cfg.regions)


def test_launch_failures_reach_the_topic(deployment: Deployment) -> None:
    """AWS documents "EC2 Instance Launch Unsuccessful" for failed launches and no event for
    an abandoned launch lifecycle action (event reference, below): the rule matches the
    documented event only; abandonment is the below-desired alarm's (next tests)."""
    assert EVENT_REFERENCE == (
        "https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-event-reference.html"
    )
    cfg = load_stack(deployment.stack)
    for region in cfg.regions:
        rule = named(deployment, RULE, f"{region}-launch-failed")
        assert json.loads(rule.inputs["eventPattern"]) == {
            "source": ["aws.autoscaling"],
            "detail-type": ["EC2 Instance Launch Unsuccessful"],
            "detail": {"AutoScalingGroupName": [f"idra-{cfg.stack}-{region}"]},
        }, rule.name
        assert "abandon" not in rule.inputs["description"], "no event is documented for it"
        target = named(deployment, TARGET, f"{region}-launch-failed")
        topic = named(deployment, TOPIC, f"{region}-alarms")
        assert target.inputs["rule"] == rule.state["name"], target.name
        assert target.inputs["arn"] == topic.state["arn"], target.name


def test_topic_policy_lets_events_publish_for_our_rule_only(deployment: Deployment) -> None:
    account = ACCOUNTS[deployment.stack]
    for region in load_stack(deployment.stack).regions:
        policy = named(deployment, TOPIC_POLICY, f"{region}-alarms")
        topic = named(deployment, TOPIC, f"{region}-alarms").state["arn"]
        rule = named(deployment, RULE, f"{region}-launch-failed").state["arn"]
        assert policy.inputs["arn"] == topic
        statements = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
        events = statements["LaunchFailures"]
        assert events["Principal"] == {"Service": "events.amazonaws.com"}, policy.name
        assert events["Action"] == "sns:Publish" and events["Resource"] == topic
        assert events["Condition"] == {"ArnEquals": {"aws:SourceArn": rule}}, policy.name
        alarms = statements["Alarms"]
        assert alarms["Principal"] == {"Service": "cloudwatch.amazonaws.com"}, policy.name
        assert alarms["Condition"] == {"StringEquals": {"aws:SourceAccount": account}}
        assert statements["Owner"]["Principal"] == {"AWS": f"arn:aws:iam::{account}:root"}


def test_in_service_below_desired_for_15_minutes_per_group(deployment: Deployment) -> None:
    """Also the alarm for abandoned readiness: an instance the launch hook abandons never
    counts in GroupInServiceInstances while GroupDesiredCapacity keeps it (AWS emits no
    documented event for the abandonment: infra/alarms.py, EVENT_REFERENCE)."""
    cfg = load_stack(deployment.stack)
    for region in cfg.regions:
        alarm = named(deployment, ALARM, f"{region}-below-desired")
        assert alarm.region == region
        queries = {q["id"]: q for q in alarm.inputs["metricQueries"]}
        assert queries["missing"] == {
            "id": "missing", "expression": "desired - inservice", "returnData": True
        }  # fmt: skip
        for query_id, name in (("desired", "GroupDesiredCapacity"),
                               ("inservice", "GroupInServiceInstances")):  # fmt: skip
            metric = queries[query_id]["metric"]
            assert metric["metricName"] == name and metric["period"] == 60, alarm.name
            assert metric["dimensions"] == {"AutoScalingGroupName": cfg.asg_name(region)}
        assert alarm.inputs["comparisonOperator"] == "GreaterThanThreshold"
        assert alarm.inputs["threshold"] == 0
        assert alarm.inputs["evaluationPeriods"] == alarm.inputs["datapointsToAlarm"] == 15
        topic = named(deployment, TOPIC, f"{region}-alarms").state["arn"]
        assert alarm.inputs["alarmActions"] == [topic], alarm.name


def test_groups_publish_the_metrics_the_alarm_reads(deployment: Deployment) -> None:
    """Node groups (the ops group's own alarm is its loop's silence)."""
    for group in [g for g in deployment.of_type(ASG) if g.name != "ops"]:
        assert set(group.inputs["enabledMetrics"]) >= {
            "GroupDesiredCapacity", "GroupInServiceInstances"
        }, group.name  # fmt: skip
        assert group.inputs["metricsGranularity"] == "1Minute", group.name


def test_silent_ops_loop_alarms_after_two_intervals(deployment: Deployment) -> None:
    cfg = load_stack(deployment.stack)
    alarm = named(deployment, ALARM, "ops-silent")
    assert alarm.region == cfg.primary_region
    assert (alarm.inputs["namespace"], alarm.inputs["metricName"]) == (
        OPS_NAMESPACE, metrics.HEARTBEAT
    )  # fmt: skip
    assert alarm.inputs["dimensions"] == {"Stack": cfg.stack}
    assert alarm.inputs["period"] == cfg.ops_tick_seconds
    assert alarm.inputs["evaluationPeriods"] == alarm.inputs["datapointsToAlarm"] == 2
    assert alarm.inputs["comparisonOperator"] == "LessThanThreshold"
    assert alarm.inputs["threshold"] == 1
    assert alarm.inputs["treatMissingData"] == "breaching", alarm.name


def test_each_ops_metric_has_its_alarm(deployment: Deployment) -> None:
    cfg = load_stack(deployment.stack)
    topic = named(deployment, TOPIC, f"{cfg.primary_region}-alarms").state["arn"]
    for name, metric in (("ops-drain-overdue", metrics.DRAINS_OVERDUE),
                         ("ops-identity-refused", metrics.IDENTITY_REFUSALS),
                         ("ops-canary-listed", metrics.CANARY_LISTED)):  # fmt: skip
        alarm = named(deployment, ALARM, name)
        assert alarm.inputs["namespace"] == OPS_NAMESPACE, name
        assert alarm.inputs["metricName"] == metric, name
        assert alarm.inputs["dimensions"] == {"Stack": cfg.stack}, name
        assert alarm.inputs["comparisonOperator"] == "GreaterThanThreshold", name
        assert alarm.inputs["threshold"] == 0, name
        assert alarm.inputs["alarmActions"] == [topic], name
