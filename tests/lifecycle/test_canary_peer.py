"""The canary's peer is never counted as a user (issue 17): the packaged agent on a real
wireguard-go interface, a real WireGuard user and a real canary peer (from
``POST /v1/nodes/{id}/canary``), the reference control plane, and the reaper against
moto's Auto Scaling. Needs root and the netns lock."""

from __future__ import annotations

import datetime as dt

from idra.lifecycle.api import OperatorApi
from idra.lifecycle.fleet import AwsFleet
from idra.lifecycle.reaper import reap
from idra.netns import unique_name, wg_keypair
from tests.agent import conftest as agent_tests
from tests.agent.conftest import NODE_IP, Client, Env, eventually, signed_instance

from .conftest import GROUP, STACK, instances

env = agent_tests.env  # the agent tests' fixture (pyz: tests/conftest.py)


def _canary(lab: Env, node_id: str) -> Client:
    """The canary's own WireGuard peer on the node, set up from the API's reply alone."""
    ns = lab.topo.netns("canary")
    lab.topo.link(lab.node, "cy", ns, "eth0")
    lab.node.addr("cy", f"{NODE_IP}/32")
    lab.node.route("198.18.99.2/32", "dev", "cy")
    ns.addr("eth0", "198.18.99.2/32")
    ns.route(f"{NODE_IP}/32", "dev", "eth0")
    private, public = wg_keypair()
    with lab.cp.client("operator") as ops:
        reply = ops.post(f"/v1/nodes/{node_id}/canary", json={"public_key": public})
    assert reply.status_code == 200, reply.text
    peer = reply.json()
    canary = Client(ns, unique_name("wgk"), public, peer["address"]["ipv4"])
    lab.topo.wireguard(ns, canary.wg)
    ns.run("wg", "set", canary.wg, "private-key", "/dev/stdin", "peer", peer["public_key"],
           "endpoint", peer["endpoint"], "allowed-ips", "10.96.0.1/32", input=private)  # fmt: skip
    ns.addr(canary.wg, canary.address)
    ns.ip("link", "set", canary.wg, "up")
    ns.route("10.96.0.1/32", "dev", canary.wg)
    eventually(lambda: public in lab.dump(), what="the canary's peer on the node")
    return canary


def _node(lab: Env) -> dict:
    with lab.cp.client("operator") as ops:
        return ops.get("/v1/nodes").json()["nodes"][0]


def test_a_drained_node_whose_only_peer_is_the_canary_is_reaped(env: Env, pyz, aws) -> None:
    instance = instances(aws)[0]
    signed = signed_instance(env.cp.signer, instance)  # the node is a moto instance
    env.imds.document, env.imds.signature = signed.document, signed.signature
    env.start_agent(pyz)
    node_id = _node(env)["id"]
    user = env.add_client()
    canary = _canary(env, node_id)
    assert env.ping(user) == 3 and env.ping(canary) == 3, "both tunnels carry packets"
    eventually(lambda: _node(env)["active_peers"] == 1 and _node(env)["peers"] == 2,
               what="two peers on the node, one of them a user")  # fmt: skip

    with env.cp.client("operator") as ops:
        assert ops.post("/node/drain", json={"id": node_id, "reason": "blocked"}).status_code
    fleet, api = (
        AwsFleet(lambda region: aws, STACK),
        OperatorApi(env.cp.url, env.cp.tokens["operator"]),
    )
    with aws.stubber:
        waiting = reap(api, fleet, dt.timedelta(hours=6))
        assert [(d.node_id, d.action) for d in waiting] == [(node_id, "wait")], "a user is on it"

        with env.cp.client("client") as client:
            assert client.delete(f"/v1/peers/{user.public_key}").status_code == 204
        eventually(lambda: user.public_key not in env.dump(), what="the user's peer removed")
        assert env.ping(canary) == 3, "the canary still handshakes through the node"
        eventually(lambda: _node(env)["active_peers"] == 0, what="active_peers 0")
        assert canary.public_key in env.dump() and _node(env)["state"] == "draining"

        aws.stubber.add_response("complete_lifecycle_action", {}, {
            "LifecycleHookName": "drain", "AutoScalingGroupName": GROUP,
            "InstanceId": instance, "LifecycleActionResult": "CONTINUE",
        })  # fmt: skip
        done = reap(api, fleet, dt.timedelta(hours=6))
    assert [(d.node_id, d.action, d.outcome) for d in done] == [
        (node_id, "terminate", "terminated")
    ]
    aws.stubber.assert_no_pending_responses()
    assert instance not in instances(aws)
    with env.cp.client("operator") as ops:
        assert ops.get("/v1/nodes").json()["nodes"] == [], "record (and canary peer) deleted"
        assert ops.delete(f"/v1/nodes/{node_id}/canary").status_code == 404
