"""``idra rollout`` with the reaper: a new launch template replaces every node through
drain, a bounded number at a time (ARCHITECTURE §5), on moto's Auto Scaling and EC2 and
the real control plane."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import boto3
import pytest

from idra.lifecycle.api import OperatorApi
from idra.lifecycle.fleet import AwsFleet
from idra.lifecycle.reaper import reap
from idra.lifecycle.rollout import AwsTemplates, budget, plan, rollout

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
    stuck, stuck_rounds, most_draining = None, 0, 0
    with aws.stubber:
        for _ in range(20):
            steps = rollout(api, templates, regions=[REGION])
            draining = api.nodes("draining")
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
    assert not old & set(instances(aws)), "every old node replaced"
    assert len(instances(aws)) == 6
    group = aws.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]
    assert group[0]["DesiredCapacity"] == 6
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
    assert [s["action"] for s in json.loads(dry.output)] == ["drain", "drain"]
    api = OperatorApi(cp.url, cp.tokens["operator"])
    assert api.nodes("draining") == [], "a dry run changes nothing"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    drained = {n["instance_id"] for n in api.nodes("draining")}
    assert drained == set(members), "the stack's group only, never the other group"
    assert {n["drain_reason"] for n in api.nodes("draining")} == {"outdated"}


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
