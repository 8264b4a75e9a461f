"""The agent reports whether its root is read-only; a root that becomes writable again
drains the node as compromised (issue 18).

The agent runs in its own mount namespace where ``/`` is a read-only bind (its state
directory a tmpfs), as on a locked node; the test then remounts that ``/`` read-write
from outside (nsenter), as an intruder would.
"""

from __future__ import annotations

import subprocess

from .conftest import Env, eventually

LOCKED = 'mount -t tmpfs -o mode=0700 tmpfs "$0" && mount -o remount,bind,ro / && exec "$@"'


def _node(env: Env) -> dict:
    with env.cp.client("operator") as ops:
        (node,) = ops.get("/v1/nodes").json()["nodes"]
    return node


def test_root_made_writable_drains_the_node_as_compromised(env: Env) -> None:
    state = env.tmp / "state"
    state.mkdir()
    wrapper = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", LOCKED)
    agent = env.start_agent(prefix=(*wrapper, str(state)))
    eventually(lambda: env.metric("idra_agent_heartbeats_total") >= 3, what="three heartbeats")
    assert env.metric("idra_agent_root_readonly") == 1
    assert _node(env)["state"] == "active", "read-only from the first report: the baseline"

    subprocess.run(
        ["nsenter", "-t", str(agent.pid), "-m", "mount", "-o", "remount,bind,rw", "/"],
        check=True,
    )
    eventually(lambda: _node(env)["state"] == "draining", what="the node drained")
    assert _node(env)["drain_reason"] == "compromised"
    eventually(lambda: env.metric("idra_agent_draining") == 1, what="the agent draining")
    assert env.metric("idra_agent_root_readonly") == 0
    assert "drain requested (compromised)" in env.log.read_text()


def test_writable_root_is_reported_and_not_a_compromise(env: Env) -> None:
    """This machine's root is writable, as a lab node's: reported, never a drain."""
    env.start_agent()
    eventually(lambda: env.metric("idra_agent_heartbeats_total") >= 3, what="three heartbeats")
    assert env.metric("idra_agent_root_readonly") == 0
    assert "idra_agent_root_readonly 0.0" in env.metrics()
    assert _node(env)["state"] == "active"
