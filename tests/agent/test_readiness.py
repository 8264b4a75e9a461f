"""Readiness and long drains: the agent completes the launch hook (CONTINUE) only once it
has registered and applied its first sync; a drain longer than the termination hook's
timeout is kept open with lifecycle heartbeats; the boot's secret fetch retries.

Auto Scaling calls go to botocore's Stubber (moto 5 lacks them), which checks each call
against the real API model; fixtures come from test_lifecycle_hook.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from node_daemon.aws import SecretError, fetch_secret_with_retries
from node_daemon.bounded import Fault

from . import test_lifecycle_hook as hook
from .conftest import Env
from .test_lifecycle_hook import EXPECTED, _agent

imds, autoscaling = hook.imds, hook.autoscaling  # the same fixtures

READY = EXPECTED | {"LifecycleHookName": "idra-ready"}


def _ready_agent(env: Env, url: str):
    agent = _agent(env, url)
    agent.opts.launch_hook = "idra-ready"
    return agent


def _pending(stubber) -> bool:
    try:
        stubber.assert_no_pending_responses()
    except AssertionError:
        return True
    return False


def test_launch_hook_completed_only_after_register_and_first_sync(
    env: Env, imds, autoscaling, monkeypatch
) -> None:
    _, url = imds
    agent = _ready_agent(env, url)
    autoscaling.add_response("complete_lifecycle_action", {}, READY)
    real_sync = agent.sync

    def down() -> None:
        raise Fault("control_plane", "http_5xx", "peers: HTTP 503")

    monkeypatch.setattr(agent, "sync", down)
    agent.cycle()  # registered, but no peers applied yet
    assert agent.node_id is not None and agent.version is None
    assert _pending(autoscaling) and not agent.ready_done, "not ready before the first sync"

    monkeypatch.setattr(agent, "sync", real_sync)
    agent.cycle()
    assert agent.version is not None and agent.ready_done
    autoscaling.assert_no_pending_responses()
    agent.cycle()  # once only: no further call (the Stubber would fail it)
    autoscaling.assert_no_pending_responses()


def test_transient_error_is_retried_and_no_pending_action_is_fine(
    env: Env, imds, autoscaling
) -> None:
    _, url = imds
    agent = _ready_agent(env, url)
    autoscaling.add_client_error("complete_lifecycle_action", "Throttling", "Rate exceeded")
    agent.cycle()
    assert not agent.ready_done, "retried on the next cycle"
    autoscaling.add_client_error(
        "complete_lifecycle_action", "ValidationError", "No active Lifecycle Action found"
    )
    agent.cycle()  # e.g. an agent restart after the hook was completed
    assert agent.ready_done
    autoscaling.assert_no_pending_responses()


def test_long_drain_keeps_the_termination_hook_open(env: Env, imds, autoscaling) -> None:
    instance, url = imds
    agent = _agent(env, url)
    agent.opts.lifecycle_timeout, agent.opts.max_drain = 120, 3600  # hook 2 min, drain 1 h
    agent.cycle()
    agent.scan = lambda: None  # a user stays connected throughout
    agent.active_peers = 1
    instance.lifecycle_state = "Terminated"
    agent.cycle()
    assert agent.terminating and not agent.lifecycle_done
    agent.terminating_since = time.monotonic() - 70  # past half the hook's timeout
    heartbeat = {k: v for k, v in EXPECTED.items() if k != "LifecycleActionResult"}
    autoscaling.add_client_error("record_lifecycle_action_heartbeat", "Throttling", "slow down")
    agent.cycle()  # an AWS error never stops the agent; retried next cycle
    autoscaling.add_response("record_lifecycle_action_heartbeat", {}, heartbeat)
    agent.cycle()
    autoscaling.assert_no_pending_responses()
    assert not agent.lifecycle_done, "users still here, the drain is not over"
    agent.terminating_since = time.monotonic() - 3600  # the whole drain has passed
    autoscaling.add_response("complete_lifecycle_action", {}, EXPECTED)
    agent.cycle()
    assert agent.lifecycle_done
    autoscaling.assert_no_pending_responses()


def test_fetch_secret_retries_with_backoff(tmp_path: Path, monkeypatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    value, out, waits, warnings = "tok-" + os.urandom(12).hex(), tmp_path / "token", [], []
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-central-1")

        def sleep(seconds: float) -> None:  # the secret shows up during the second wait
            waits.append(seconds)
            if len(waits) == 2:
                client.create_secret(Name="idra/staging/NODE_TOKEN", SecretString=value)

        fetch_secret_with_retries("idra/staging/NODE_TOKEN", "eu-central-1", out, 10, client,
                                  sleep, warnings.append)  # fmt: skip
        with pytest.raises(SecretError, match="ResourceNotFoundException"):
            fetch_secret_with_retries("idra/staging/NOPE", "eu-central-1", tmp_path / "x", 4,
                                      client, waits.append)  # fmt: skip
    assert out.read_text() == value
    assert len(warnings) == 2 and all("attempt" in w and value not in w for w in warnings)
    assert 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2, "exponential backoff with jitter"
    assert len(waits) == 2 + 3 and waits[-1] <= 8
    assert not (tmp_path / "x").exists()
