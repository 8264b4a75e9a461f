"""ASG termination: the agent sees the notice in IMDSv2, drains itself, and completes the
lifecycle action (CONTINUE) once its last user has left.

A local IMDSv2 stand-in answers metadata (token required) and the signed identity
document the agent registers with. moto 5 lacks
``complete_lifecycle_action``: botocore's Stubber checks that call against the real API
model, and fails the test if the agent calls it too early.
"""

from __future__ import annotations

import threading

import boto3
import pytest
from botocore.stub import Stubber

from idra.lab import imds as metadata
from node_daemon.api import NodeApi
from node_daemon.aws import Imds
from node_daemon.daemon import Agent, Options
from node_daemon.metrics import Metrics
from node_daemon.wg.uapi import UapiDriver

from .conftest import Env, eventually, signed_instance


@pytest.fixture
def imds(env: Env):
    """The instance's IMDSv2 (signed identity document, lifecycle state), on loopback."""
    instance = signed_instance(env.cp.signer, "i-0hooked")
    server = metadata.serve(instance)
    yield instance, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def autoscaling(monkeypatch):
    client = boto3.client(
        "autoscaling",
        region_name="eu-central-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    monkeypatch.setattr(boto3, "client", lambda *a, **kw: client)
    with Stubber(client) as stubber:
        yield stubber


def _agent(env: Env, imds_url: str) -> Agent:
    opts = Options(
        env.wg,
        51820,
        "eu-central-1",
        "192.0.2.1",
        "i-0hooked",
        env.tmp / "state",
        heartbeat_interval=0.5,
        scan_interval=0.2,
        asg_name="idra-staging-eu-central-1",
        lifecycle_hook="idra-drain",
        interface_netns=env.node.name,
    )
    api = NodeApi(env.cp.url, env.tmp / "node.token")
    agent = Agent(opts, api, UapiDriver(env.wg), Metrics(), Imds(imds_url))
    agent.ensure_key()
    return agent


EXPECTED = {
    "LifecycleHookName": "idra-drain",
    "AutoScalingGroupName": "idra-staging-eu-central-1",
    "InstanceId": "i-0hooked",
    "LifecycleActionResult": "CONTINUE",
}


def test_termination_notice_drains_then_completes_when_empty(env: Env, imds, autoscaling) -> None:
    instance, url = imds
    agent = _agent(env, url)
    agent.cycle()
    assert not agent.draining

    instance.lifecycle_state = "Terminated"
    autoscaling.add_response("complete_lifecycle_action", {}, EXPECTED)
    agent.cycle()
    assert agent.draining and agent.terminating
    assert agent.lifecycle_done, "no active peers: completed at once"
    autoscaling.assert_no_pending_responses()
    assert _internal_faults(agent) == 0
    agent.cycle()  # the next heartbeat tells the control plane
    with env.cp.client("operator") as ops:
        node = ops.get("/v1/nodes").json()["nodes"][0]
    assert (node["state"], node["drain_reason"]) == ("draining", "terminating")


def test_waits_for_the_last_user(env: Env, imds, autoscaling) -> None:
    instance, url = imds
    agent = _agent(env, url)
    agent.cycle()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            agent.cycle()
            stop.wait(0.3)

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        user = env.add_client()
        assert env.ping(user) == 3
        eventually(lambda: agent.active_peers == 1, what="the user counted as active")
        instance.lifecycle_state = "Terminated"
        eventually(lambda: agent.terminating, what="the termination notice")
        assert not agent.lifecycle_done, "a user is still connected"
        autoscaling.add_response("complete_lifecycle_action", {}, EXPECTED)
        with env.cp.client("client") as api:
            assert api.delete(f"/v1/peers/{user.public_key}").status_code == 204
        eventually(lambda: agent.lifecycle_done, what="completion once the user left")
    finally:
        stop.set()
        worker.join(10)
    autoscaling.assert_no_pending_responses()
    assert _internal_faults(agent) == 0, "no call before the last user left (Stubber)"


def _internal_faults(agent: Agent) -> float:
    labels = {"dependency": "agent", "kind": "internal"}
    return agent.metrics.registry.get_sample_value("idra_agent_faults_total", labels) or 0
