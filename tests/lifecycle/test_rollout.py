"""``idra rollout`` with the reaper: a new launch template replaces every node through
drain, a bounded number at a time (ARCHITECTURE §5), on moto's Auto Scaling and EC2 and
the real control plane."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time

import boto3
import pytest

from idra.lifecycle.api import OperatorApi
from idra.lifecycle.fleet import AwsFleet
from idra.lifecycle.reaper import reap
from idra.lifecycle.rollout import READY_WITHIN_S, AwsTemplates, budget, plan, rollout

from .conftest import GROUP, OTHER, REGION, STACK, instances

MAX_DRAIN = dt.timedelta(hours=6)


def _new_template(ec2) -> None:
    """What `pulumi up` does on a change: a new version, made default, used by the group."""
    image = ec2.describe_images()["Images"][1]["ImageId"]
    ec2.create_launch_template_version(
        LaunchTemplateName="node", SourceVersion="1", LaunchTemplateData={"ImageId": image}
    )
    ec2.modify_launch_template(LaunchTemplateName="node", DefaultVersion="2")


class RecordingFleet(AwsFleet):
    """The real AWS fleet backend; remembers each node as it was when terminated."""

    def __init__(self, aws) -> None:
        super().__init__(lambda region: aws, STACK)
        self.now = dt.datetime.now(dt.UTC)
        self.terminated: list[tuple[dict, dt.datetime]] = []

    def terminate(self, node: dict) -> str:
        self.terminated.append((dict(node), self.now))
        return super().terminate(node)


def test_new_template_replaces_every_node_through_drain(cp, aws) -> None:
    """(b) The happy path: a surge node first, then one old node at a time, each only once
    the previous replacement serves; never fewer serving nodes than before; every old node
    replaced within the budget."""
    ec2 = boto3.client("ec2", region_name=REGION)
    aws.update_auto_scaling_group(AutoScalingGroupName=GROUP, MaxSize=8, DesiredCapacity=6)
    nodes: dict[str, str] = {}  # instance -> node id
    peers: dict[str, int] = {}  # node id -> active peers its agent reports

    def agents_report() -> None:
        """Each instance's agent registers (once) and heartbeats."""
        for instance in instances(aws):
            if instance not in nodes:
                nodes[instance] = cp.register(instance, region=REGION)
                peers[nodes[instance]] = 0 if len(nodes) > 6 else 3
            cp.heartbeat(nodes[instance], active_peers=peers[nodes[instance]])

    agents_report()
    old = set(instances(aws))
    assert len(old) == 6
    _new_template(ec2)
    aws.update_auto_scaling_group(
        AutoScalingGroupName=GROUP, LaunchTemplate={"LaunchTemplateName": "node", "Version": "2"}
    )
    templates = AwsTemplates(
        lambda service, region: aws if service == "autoscaling" else ec2, {REGION: GROUP}
    )
    api = OperatorApi(cp.url, cp.tokens["operator"])
    fleet = RecordingFleet(aws)
    for _ in range(6):
        aws.stubber.add_response("complete_lifecycle_action", {})  # one per termination
    limit = budget(6, None, 10)
    assert limit == 1
    stuck, stuck_rounds, most_draining, fewest_active = None, 0, 0, 6
    with aws.stubber:
        for _ in range(20):
            steps = rollout(api, templates, regions=[REGION])
            assert not [s for s in steps if s.action == "stop"], steps
            draining = api.nodes("draining")
            fewest_active = min(fewest_active, len(api.nodes("active")))
            most_draining = max(most_draining, len(draining))
            assert len(draining) <= limit, steps
            assert all(n["drain_reason"] == "outdated" for n in draining)
            for node in draining:  # users leave a draining node, except on the first one
                stuck = stuck or node["id"]
                if node["id"] != stuck:
                    peers[node["id"]] = 0
                    cp.heartbeat(node["id"], active_peers=0)
            if any(n["id"] == stuck for n in draining):
                stuck_rounds += 1
            late = stuck_rounds > 2  # the stuck node's drain deadline has passed
            fleet.now = dt.datetime.now(dt.UTC) + (MAX_DRAIN + dt.timedelta(minutes=1)) * late
            reap(api, fleet, MAX_DRAIN, now=fleet.now)
            agents_report()
            if not old & set(instances(aws)):
                break
    aws.stubber.assert_no_pending_responses()

    assert most_draining == limit
    assert fewest_active == 6, "the surge node served before the first old node drained"
    assert not old & set(instances(aws)), "every old node replaced"
    # One node more than before: the surge. Target tracking (scale-in allowed) lowers
    # desired again when the load does not need it, and the excess leaves through drain.
    assert len(instances(aws)) == 7
    group = aws.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]
    assert group[0]["DesiredCapacity"] == 7
    assert templates.outdated(REGION, instances(aws)) == {}, "all on the new template"
    assert sorted(n["instance_id"] for n, _ in fleet.terminated) == sorted(old)
    for node, when in fleet.terminated:
        started = dt.datetime.fromtimestamp(node["drain_started_at"], dt.UTC)
        assert node["drain_reason"] == "outdated"
        assert node["active_peers"] == 0 or when - started >= MAX_DRAIN, node
    assert stuck_rounds > 2, "the node with users waited for its drain deadline"
    with cp.client("operator") as ops:
        left = {n["instance_id"] for n in ops.get("/v1/nodes").json()["nodes"]}
    assert left == set(instances(aws)), "old records deleted"


def _node(node_id: str, region: str, peers: int = 0, age: float = 5) -> dict:
    return {"id": node_id, "region": region, "active_peers": peers,
            "last_heartbeat_at": 1000 - age, "instance_id": f"i-{node_id}"}  # fmt: skip


def test_budget_counts_every_draining_node_and_emptiest_go_first() -> None:
    active = [_node("a", "r1", 5), _node("b", "r1", 0), _node("c", "r1", 2), _node("d", "r1")]
    outdated = {"a": "old", "b": "old", "c": "old"}
    steps = plan(active, [], outdated, limit=2, now=1000)
    assert [(s.node_id, s.action) for s in steps] == [("b", "drain"), ("c", "drain"), ("a", "hold")]
    already = plan(active, [_node("x", "r1")], outdated, limit=2, now=1000)
    assert [s.action for s in already] == ["drain", "hold", "hold"]


def test_never_the_last_healthy_node_of_a_region() -> None:
    active = [_node("a", "r1"), _node("b", "r2"), _node("c", "r2", age=600)]  # c: stale
    steps = plan(active, [], {"a": "old", "b": "old", "c": "old"}, limit=10, now=1000)
    assert {s.node_id: s.action for s in steps} == {"a": "hold", "b": "hold", "c": "drain"}
    why = {s.node_id: s.why for s in steps}
    assert (why["a"], why["b"]) == ("last healthy node in r1", "last healthy node in r2")


def test_budget_is_a_share_of_the_pool_or_a_count() -> None:
    assert [budget(n, None, 10) for n in (1, 6, 10, 11, 40)] == [1, 1, 1, 2, 4]
    assert budget(40, 3, 10) == 3
    assert budget(40, None, 25) == 10


def test_agent_version_rolls_too(cp) -> None:
    api = OperatorApi(cp.url, cp.tokens["operator"])
    ids = [cp.register(f"i-0{n}", region=REGION) for n in range(3)]
    for node_id in ids:
        cp.heartbeat(node_id)
    steps = rollout(api, None, regions=[REGION], agent_version="2.0", max_draining=1)
    assert [s.action for s in steps] == ["drain", "hold", "hold"]
    assert "agent test, want 2.0" in steps[0].why
    assert [n["drain_reason"] for n in api.nodes("draining")] == ["outdated"]
    assert rollout(api, None, regions=[REGION], agent_version="test") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stack", "nosuch"], "Pulumi.nosuch.yaml: no such stack file"),
        (["--stack", "staging", "--region", "us-east-1"], "us-east-1 is not a region of"),
        (["--stack", "staging", "--max-draining", "0"], "Invalid value for '--max-draining'"),
    ],
)
def test_rollout_cli_bad_input_is_one_line_exit_2(tmp_path, args, message) -> None:
    token = tmp_path / "operator.token"
    token.write_text("x" * 32)
    result = subprocess.run(
        [sys.executable, "-m", "idra.cli", "rollout", "--api-url", "http://127.0.0.1:9",
         "--operator-token-file", str(token), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_reap_takes_max_drain_from_the_stack(tmp_path) -> None:
    token = tmp_path / "operator.token"
    token.write_text("x" * 32)
    result = subprocess.run(
        [sys.executable, "-m", "idra.cli", "reap", "--api-url", "http://127.0.0.1:9",
         "--operator-token-file", str(token), "--stack", "nosuch"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Pulumi.nosuch.yaml: no such stack file" in result.stderr


def test_rollout_command_on_the_stacks_group(cp, aws) -> None:
    """`idra rollout --stack staging` as the lifecycle workflow runs it (click entry point,
    its own boto3 clients, here answered by moto): only the stack's group is looked at."""
    from click.testing import CliRunner

    from idra.cli import main

    ec2 = boto3.client("ec2", region_name=REGION)
    ours = GROUP  # Pulumi.staging.yaml's group in its one region
    members = instances(aws)
    for instance in [*members, *instances(aws, OTHER)]:  # the other group's nodes too
        cp.heartbeat(cp.register(instance, region=REGION), active_peers=1)
    _new_template(ec2)
    aws.update_auto_scaling_group(
        AutoScalingGroupName=ours, LaunchTemplate={"LaunchTemplateName": "node", "Version": "2"}
    )
    token = cp.log.parent / "operator.token"
    args = ["rollout", "--api-url", cp.url, "--operator-token-file", str(token),
            "--stack", "staging", "--max-draining", "5", "--json"]  # fmt: skip
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert [s["action"] for s in json.loads(dry.output)] == ["surge", "hold", "hold"]
    api = OperatorApi(cp.url, cp.tokens["operator"])
    assert api.nodes("draining") == [], "a dry run changes nothing"
    assert _desired(aws) == 2
    surged = CliRunner().invoke(main, args)
    assert surged.exit_code == 0, surged.output
    assert _desired(aws) == 3 and api.nodes("draining") == [], "surge first"
    (fresh,) = set(instances(aws)) - set(members)
    cp.heartbeat(cp.register(fresh, region=REGION), active_peers=0)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    drained = {n["instance_id"] for n in api.nodes("draining")}
    assert len(drained) == 1 and drained <= set(members), "the stack's group only, one a pass"
    assert {n["drain_reason"] for n in api.nodes("draining")} == {"outdated"}


def _desired(aws) -> int:
    return aws.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0][
        "DesiredCapacity"
    ]


def test_no_active_node_in_the_group_is_no_work(cp, aws) -> None:
    """Every active record names an instance outside the stack's group: nothing to look up
    (EC2's DescribeInstances with an empty id list would list the whole region)."""
    ec2 = boto3.client("ec2", region_name=REGION)
    for instance in instances(aws, OTHER):
        cp.heartbeat(cp.register(instance, region=REGION), active_peers=1)
    _new_template(ec2)
    templates = AwsTemplates(
        lambda service, region: aws if service == "autoscaling" else ec2, {REGION: GROUP}
    )
    api = OperatorApi(cp.url, cp.tokens["operator"])
    assert rollout(api, templates, regions=[REGION]) == []
    assert api.nodes("draining") == []


class Fleet:
    """The stack's group (moto) with ``size`` old nodes whose agents registered, then a new
    template version; agents register as their instances appear (``report``)."""

    def __init__(self, cp, aws, size: int, max_size: int) -> None:
        self.cp, self.aws = cp, aws
        self.ec2 = boto3.client("ec2", region_name=REGION)
        aws.update_auto_scaling_group(
            AutoScalingGroupName=GROUP, MaxSize=max_size, DesiredCapacity=size
        )
        self.nodes: dict[str, str] = {}
        self.report()
        self.old = set(self.nodes)
        _new_template(self.ec2)
        aws.update_auto_scaling_group(
            AutoScalingGroupName=GROUP,
            LaunchTemplate={"LaunchTemplateName": "node", "Version": "2"},
        )
        self.templates = AwsTemplates(
            lambda service, region: aws if service == "autoscaling" else self.ec2,
            {REGION: GROUP},
        )
        self.api = OperatorApi(cp.url, cp.tokens["operator"])
        self.reaper = AwsFleet(lambda region: aws, STACK)

    def report(self, register_new: bool = True) -> None:
        """Every instance's agent heartbeats; new ones register unless they never come up."""
        for instance in instances(self.aws):
            if instance not in self.nodes and register_new:
                self.nodes[instance] = self.cp.register(instance, region=REGION)
            if instance in self.nodes:
                self.cp.heartbeat(self.nodes[instance], active_peers=0)

    def rollout(self, **kw) -> list:
        return rollout(self.api, self.templates, regions=[REGION], **kw)

    def reap(self) -> None:
        self.aws.stubber.add_response("complete_lifecycle_action", {})
        with self.aws.stubber:
            reap(self.api, self.reaper, MAX_DRAIN)

    def drained(self) -> set[str]:
        return {n["instance_id"] for n in self.api.nodes("draining")}


def test_surge_node_never_active_stops_before_any_drain(cp, aws) -> None:
    """(a) The new version never comes up: the surge node never registers. The rollout
    holds, then stops at --ready-within with exit 1, and no old node was drained."""
    from click.testing import CliRunner

    from idra.cli import main

    fleet = Fleet(cp, aws, size=2, max_size=4)
    steps = fleet.rollout()
    assert [s.action for s in steps] == ["surge", "hold", "hold"]
    fleet.report(register_new=False)
    assert {s.action for s in fleet.rollout()} == {"hold"}, "waiting for the surge node"
    late = time.time() + READY_WITHIN_S + 1
    stopped = fleet.rollout(now=late)
    assert stopped[0].action == "stop" and "is not active yet" in stopped[0].why
    args = ["rollout", "--api-url", cp.url, "--stack", "staging", "--ready-within", "0s",
            "--operator-token-file", str(cp.log.parent / "operator.token")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "rollout stopped in eu-central-1" in result.output
    assert fleet.drained() == set() and fleet.old <= set(instances(aws))


def test_replacement_never_active_stops_after_the_first(cp, aws) -> None:
    """(a) At maxSize (no surge possible) the first old node is drained and replaced; its
    replacement never becomes active: the rollout stops, no second old node drained."""
    fleet = Fleet(cp, aws, size=3, max_size=3)
    assert len([s for s in fleet.rollout() if s.action == "drain"]) == 1
    fleet.reap()  # its users left: terminated, a replacement launches
    fleet.report(register_new=False)  # ... and never registers
    assert not [s for s in fleet.rollout() if s.action == "drain"]
    stopped = fleet.rollout(now=time.time() + READY_WITHIN_S + 1)
    assert [s.action for s in stopped if s.node_id == "-"] == ["stop"]
    assert not [s for s in stopped if s.action == "drain"]
    assert len(fleet.old & set(instances(aws))) == 2, "only the first old node is gone"
    assert fleet.drained() == set()


def test_a_long_drain_is_no_failed_launch(cp, aws) -> None:
    """A drained node whose users stay for hours is still in service but leaving: the
    rollout waits for it, it does not take it for a launch that never came up."""
    fleet = Fleet(cp, aws, size=3, max_size=3)
    assert len([s for s in fleet.rollout() if s.action == "drain"]) == 1
    fleet.report()
    steps = fleet.rollout(now=time.time() + READY_WITHIN_S + 1)
    assert not [s for s in steps if s.action in ("stop", "drain")], steps
    assert len(fleet.drained()) == 1


def test_group_at_max_size_still_progresses_one_at_a_time(cp, aws) -> None:
    """(c) No room to surge: one old node at a time, the next only once the previous
    replacement serves, until every node is new; desired never changes."""
    fleet = Fleet(cp, aws, size=4, max_size=4)
    for _ in range(12):
        steps = fleet.rollout()
        assert len([s for s in steps if s.action == "drain"]) <= 1
        assert not [s for s in steps if s.action in ("surge", "stop")], steps
        assert len(fleet.drained()) <= 1
        fleet.reap()
        fleet.report()
        if not fleet.old & set(instances(aws)):
            break
    assert not fleet.old & set(instances(aws)), "every old node replaced"
    assert _desired(aws) == 4 and len(instances(aws)) == 4


def test_failed_launches_stop_the_rollout(cp, aws) -> None:
    """An abandoned readiness hook (AWS: a Cancelled launch activity) stops the rollout
    even with a new-version node serving: nothing is drained."""
    fleet = Fleet(cp, aws, size=2, max_size=4)
    fleet.rollout()  # surge
    fleet.report()
    aws.activities.append({
        "ActivityId": "a1", "AutoScalingGroupName": GROUP, "StatusCode": "Cancelled",
        "Description": "Launching a new EC2 instance: i-0abc",
        "StatusMessage": "Instance failed to complete user's Lifecycle Action: Lifecycle "
                         "Action with token x was abandoned: Heartbeat Timeout",
        "Cause": "", "StartTime": dt.datetime.now(dt.UTC),
    })  # fmt: skip
    steps = fleet.rollout()
    assert steps[0].action == "stop" and "abandoned" in steps[0].why
    assert not [s for s in steps if s.action == "drain"] and fleet.drained() == set()
