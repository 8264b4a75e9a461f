"""The reaper against the real control plane and moto's Auto Scaling (ARCHITECTURE §5)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

from idra.lifecycle.api import OperatorApi
from idra.lifecycle.fleet import AwsFleet
from idra.lifecycle.reaper import decide, reap

from .conftest import GROUP, OTHER, REGION, STACK, instances

HOURS = dt.timedelta(hours=6)


def _fleet_nodes(cp, aws) -> dict[str, str]:
    """One node record per instance of the moto group: instance id → node id."""
    nodes = {}
    for instance in instances(aws):
        nodes[instance] = cp.register(instance, region=REGION)
        cp.heartbeat(nodes[instance], active_peers=3)
    return nodes


def _drain(cp, node_id: str, reason: str) -> None:
    with cp.client("operator") as ops:
        assert ops.post("/node/drain", json={"id": node_id, "reason": reason}).status_code == 202


def _api(cp) -> OperatorApi:
    return OperatorApi(cp.url, cp.tokens["operator"])


def _node_ids(cp) -> set[str]:
    with cp.client("operator") as ops:
        return {n["id"] for n in ops.get("/v1/nodes").json()["nodes"]}


def _expect_completion(aws, instance: str) -> None:
    aws.stubber.add_response(
        "complete_lifecycle_action",
        {},
        {
            "LifecycleHookName": "drain",
            "AutoScalingGroupName": GROUP,
            "InstanceId": instance,
            "LifecycleActionResult": "CONTINUE",
        },
    )


def test_blocked_waits_for_users_then_goes(cp, aws) -> None:
    nodes = _fleet_nodes(cp, aws)
    blocked, healthy = list(nodes)
    _drain(cp, nodes[blocked], "blocked")
    fleet = AwsFleet(lambda region: aws, STACK)
    with aws.stubber:
        first = reap(_api(cp), fleet, HOURS)
        assert [(d.node_id, d.action) for d in first] == [(nodes[blocked], "wait")]
        assert blocked in instances(aws), "users still on it"

        cp.heartbeat(nodes[blocked], active_peers=0)
        _expect_completion(aws, blocked)
        second = reap(_api(cp), fleet, HOURS)
        assert [(d.action, d.outcome) for d in second] == [("terminate", "terminated")]
        again = reap(_api(cp), fleet, HOURS)
    assert again == [], "a second run changes nothing"
    aws.stubber.assert_no_pending_responses()
    after = instances(aws)
    assert blocked not in after and healthy in after and len(after) == 2
    group = aws.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])
    assert group["AutoScalingGroups"][0]["DesiredCapacity"] == 2
    assert _node_ids(cp) == {nodes[healthy]}, "record deleted, the healthy one untouched"


def test_compromised_goes_at_once_and_max_drain_ends_the_wait(cp, aws) -> None:
    nodes = _fleet_nodes(cp, aws)
    compromised, stuck = list(nodes)
    _drain(cp, nodes[compromised], "compromised")
    _drain(cp, nodes[stuck], "manual")
    _expect_completion(aws, compromised)
    with aws.stubber:
        decisions = {
            d.node_id: d.action for d in reap(_api(cp), AwsFleet(lambda r: aws, STACK), HOURS)
        }
        assert decisions == {nodes[compromised]: "terminate", nodes[stuck]: "wait"}
        _expect_completion(aws, stuck)
        later = dt.datetime.now(dt.UTC) + HOURS + dt.timedelta(minutes=1)
        decisions = reap(_api(cp), AwsFleet(lambda r: aws, STACK), HOURS, now=later)
    assert [(d.node_id, d.action) for d in decisions] == [(nodes[stuck], "terminate")]
    assert "drain time" in decisions[0].why
    assert not set(nodes) & set(instances(aws))


def test_root_made_writable_is_reaped_at_once_with_users_on_it(cp, aws) -> None:
    """A heartbeat whose root is writable again after it was read-only: the control
    plane drains the node as compromised and the reaper does not wait for its users."""
    nodes = _fleet_nodes(cp, aws)
    unlocked, healthy = list(nodes)
    for instance in nodes:
        cp.heartbeat(nodes[instance], active_peers=3, root_readonly=True)
    assert cp.heartbeat(nodes[unlocked], active_peers=3, root_readonly=False)["drain"] is True
    _expect_completion(aws, unlocked)
    with aws.stubber:
        decisions = reap(_api(cp), AwsFleet(lambda r: aws, STACK), HOURS)
    assert [(d.node_id, d.action, d.outcome) for d in decisions] == [
        (nodes[unlocked], "terminate", "terminated")
    ]
    after = instances(aws)
    assert unlocked not in after and healthy in after, "users or not, it goes"
    assert _node_ids(cp) == {nodes[healthy]}


def test_dry_run_and_region_filter_change_nothing(cp, aws) -> None:
    nodes = _fleet_nodes(cp, aws)
    victim = next(iter(nodes))
    _drain(cp, nodes[victim], "compromised")
    with aws.stubber:
        elsewhere = reap(_api(cp), AwsFleet(lambda r: aws, STACK), HOURS, regions=["us-east-1"])
        dry = reap(_api(cp), AwsFleet(lambda r: aws, STACK), HOURS, dry_run=True)
    assert elsewhere == []
    assert [(d.action, d.outcome) for d in dry] == [("terminate", "")]
    assert victim in instances(aws) and nodes[victim] in _node_ids(cp)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "idra.cli",
            "reap",
            "--api-url",
            cp.url,
            "--fleet",
            "lab",  # a dry run still asks the fleet; the lab one never leaves this machine
            "--dry-run",
            "--json",
            "--operator-token-file",
            str(cp.log.parent / "operator.token"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["action"] == "terminate"
    assert nodes[victim] in _node_ids(cp)
    no_stack = subprocess.run(
        [sys.executable, "-m", "idra.cli", "reap", "--api-url", cp.url, "--fleet", "aws",
         "--operator-token-file", str(cp.log.parent / "operator.token")],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert no_stack.returncode == 2 and "--stack" in no_stack.stderr
    assert len(no_stack.stderr.strip().splitlines()) == 1


def _other_groups_instance(aws) -> str:
    return instances(aws, OTHER)[0]


def test_a_record_pointing_at_another_groups_instance_survives(cp, aws) -> None:
    """(e) of issue 13: a node record names an instance of another group (say the
    control plane's database was tampered with). The reaper refuses, reports it in the
    table and in --json, exits 1, and never terminates it."""
    from click.testing import CliRunner

    from idra.lifecycle.commands import reap as reap_command

    nodes = _fleet_nodes(cp, aws)
    foreign = _other_groups_instance(aws)
    bogus = cp.register(foreign, region=REGION)
    for node_id in (bogus, nodes[next(iter(nodes))]):
        _drain(cp, node_id, "compromised")
    healthy_victim = next(iter(nodes))
    _expect_completion(aws, healthy_victim)
    args = ["--api-url", cp.url, "--operator-token-file", str(cp.log.parent / "operator.token"),
            "--fleet", "aws", "--stack", STACK]  # fmt: skip
    runner = CliRunner()
    dry = runner.invoke(reap_command, [*args, "--dry-run"])
    assert dry.exit_code == 1 and "refused" in dry.output and "billing-workers" in dry.output
    with aws.stubber:
        decisions = {d.node_id: d for d in reap(_api(cp), AwsFleet(lambda r: aws, STACK), HOURS)}
    assert decisions[bogus].action == "refused"
    assert f"in group {OTHER}, not {GROUP}" in decisions[bogus].why
    assert decisions[nodes[healthy_victim]].outcome == "terminated", "its own node still goes"
    again = runner.invoke(reap_command, [*args, "--json"])
    assert again.exit_code == 1
    assert [(d["node_id"], d["action"]) for d in json.loads(again.stdout)] == [(bogus, "refused")]
    assert "1 of 1 draining nodes failed or were refused" in again.stderr
    assert foreign in instances(aws, OTHER), "never terminated"
    assert bogus in _node_ids(cp), "kept for the operator to see"


def test_record_stays_until_aws_shows_the_instance_terminated(cp, aws) -> None:
    """A compromised node with users, whose own agent keeps sending lifecycle heartbeats:
    the reaper terminates it at once and completes the hook itself as soon as AWS holds it
    in Terminating:Wait; while it is not yet there the record stays and the next pass
    resumes (it used to delete the record and never complete the hook)."""
    nodes = _fleet_nodes(cp, aws)
    victim, healthy = list(nodes)
    _drain(cp, nodes[victim], "compromised")
    aws.settle_polls = 100  # AWS is slow to reach Terminating:Wait this time
    slow = AwsFleet(lambda r: aws, STACK, hook_wait_s=2, sleep=lambda _: None)
    with aws.stubber:
        (first,) = reap(_api(cp), slow, HOURS)
    assert first.action == "terminate" and first.outcome.startswith("terminating")
    assert not first.failed
    assert nodes[victim] in _node_ids(cp), "kept: the instance is not terminated yet"
    aws.settle_polls = 0
    _expect_completion(aws, victim)
    with aws.stubber:
        (second,) = reap(_api(cp), slow, HOURS)
    aws.stubber.assert_no_pending_responses()
    assert second.outcome == "terminated"
    assert _node_ids(cp) == {nodes[healthy]}
    assert aws.terminate_calls == [(victim, False)]
    assert victim not in instances(aws) and len(instances(aws)) == 2, "replaced"


def test_identity_lost_is_reaped_at_once_with_users_on_it(cp, aws) -> None:
    """Its instance registered again without the node's credential (a reboot lost it, or
    a replay): drained as identity_lost, and the reaper does not wait for its users."""
    nodes = _fleet_nodes(cp, aws)
    rebooted, healthy = list(nodes)
    assert cp.register_reply(rebooted, REGION, credential=None).status_code == 409
    _expect_completion(aws, rebooted)
    with aws.stubber:
        decisions = reap(_api(cp), AwsFleet(lambda r: aws, STACK), HOURS)
    assert [(d.node_id, d.reason, d.action, d.outcome) for d in decisions] == [
        (nodes[rebooted], "identity_lost", "terminate", "terminated")
    ]
    assert rebooted not in instances(aws) and healthy in instances(aws)
    assert _node_ids(cp) == {nodes[healthy]}


# -- the decision alone (no server, no AWS): what the mutation check runs -----------------

NOW = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)


def _decide(**node) -> tuple[str, str]:
    decision = decide({"id": "node-1", "state": "draining"} | node, NOW, HOURS)
    return decision.action, decision.why


def test_only_a_draining_node_is_ever_terminated() -> None:
    for state in ("active", "retired", None):
        assert _decide(state=state, drain_reason="compromised", active_peers=0)[0] == "wait"


def test_users_keep_a_blocked_or_manual_node_until_the_drain_time_is_over() -> None:
    started = (NOW - HOURS + dt.timedelta(minutes=1)).isoformat()
    for reason in ("blocked", "manual", None):
        assert _decide(drain_reason=reason, active_peers=2, drain_started_at=started) == (
            "wait", "2 active peers",
        )  # fmt: skip
        assert _decide(drain_reason=reason, active_peers=0)[0] == "terminate"
        over = (NOW - HOURS).isoformat()
        assert _decide(drain_reason=reason, active_peers=2, drain_started_at=over)[0] == (
            "terminate"
        )


def test_a_compromised_node_goes_at_once_with_users_on_it() -> None:
    assert _decide(drain_reason="compromised", active_peers=40)[0] == "terminate"
