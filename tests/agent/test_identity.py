"""The agent's side of registration and retirement (issue 23, items 3 and 9), with the
built node-daemon.pyz, the real control plane and wireguard-go in a namespace.

- The node credential is the agent's own: written 0600 to the state dir before the
  first call and sent in ``X-Node-Credential`` with every registration, the first
  included; whatever credential the reply names is the one kept (an older control
  plane chooses its own).
- A first-registration reply lost on the way: the retry carries the same credential,
  so a control plane that binds it on first use gives back the same node.
- A node whose record is deleted while it runs is told "retired": it removes every
  peer from its interface, adds none again and stays up.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import Env, Forwarder, eventually


@dataclass
class Registration:
    """One registration as the relay saw it (secrets left out of its repr)."""

    credential: str | None = field(repr=False)  # X-Node-Credential sent
    saved: str | None = field(repr=False)  # the state dir's node.credential at that moment
    mode: int | None  # its permission bits
    reply: dict = field(default_factory=dict, repr=False)


class Relay(Forwarder):
    """Records each registration and, with ``lose_first``, delivers the first one but
    never its reply."""

    def __init__(self, upstream: str, state_dir: Path, lose_first: bool = False) -> None:
        super().__init__(upstream)
        self.state_dir, self.lose_first = state_dir, lose_first
        self.registrations: list[Registration] = []

    def exchange(self, method, path, query, body, headers):
        if (method, path) != ("POST", "/v1/nodes"):
            return super().exchange(method, path, query, body, headers)
        file = self.state_dir / "node.credential"
        saved = file.read_text().strip() if file.exists() else None
        mode = file.stat().st_mode & 0o777 if file.exists() else None
        seen = Registration(headers.get("x-node-credential"), saved, mode)
        self.registrations.append(seen)
        status, content = super().exchange(method, path, query, body, headers)
        seen.reply = json.loads(content or b"{}")
        if self.lose_first and len(self.registrations) == 1:
            return None  # committed by the control plane, never answered
        return status, content


@pytest.fixture
def relay(env: Env, request):
    relay = Relay(env.cp.url, env.tmp / "state", lose_first=getattr(request, "param", False))
    yield relay
    env.stop_agent()
    relay.close()


def _nodes(env: Env) -> list[dict]:
    with env.cp.client("operator") as ops:
        return ops.get("/v1/nodes").json()["nodes"]


def test_first_registration_carries_the_agents_own_credential(
    env: Env, pyz: Path, relay: Relay
) -> None:
    env.start_agent(pyz, "--api-url", relay.url)
    first = relay.registrations[0]
    assert first.credential and len(first.credential) >= 43, "256 bits, chosen by the agent"
    assert (first.saved, first.mode) == (first.credential, 0o600), "on tmpfs before the call"
    assert (env.tmp / "state").stat().st_mode & 0o777 == 0o700
    kept = first.reply.get("node_credential", first.credential)  # an older server's own
    assert (env.tmp / "state" / "node.credential").read_text().strip() == kept
    env.stop_agent()
    env.start_agent(pyz, "--api-url", relay.url)
    assert relay.registrations[-1].credential == kept, "every registration carries it"
    assert len(_nodes(env)) == 1
    for text in (env.log.read_text(), env.cp.log.read_text(), env.metrics()):
        assert first.credential not in text and kept not in text, "never logged"


@pytest.mark.parametrize("relay", [True], indirect=True)
def test_lost_first_reply_is_retried_with_the_same_credential(
    env: Env, pyz: Path, relay: Relay
) -> None:
    env.start_agent(pyz, "--api-url", relay.url, wait=False)
    eventually(lambda: len(relay.registrations) >= 2, what="the retried registration")
    first, retry = relay.registrations[:2]
    assert first.credential and retry.credential == first.credential
    assert first.reply.get("node_id"), "the control plane committed the first one"
    assert env.metric("idra_agent_faults_total", 'dependency="control_plane",kind="transport"')
    assert env.agent.poll() is None


@pytest.mark.parametrize("relay", [True], indirect=True)
def test_lost_first_reply_keeps_the_node(env: Env, pyz: Path, relay: Relay) -> None:
    env.start_agent(pyz, "--api-url", relay.url, wait=False)
    done = ('result="ok"', 'result="refused"')
    eventually(lambda: any(env.metric("idra_agent_syncs_total", r) for r in done),
               what="the retry answered")  # fmt: skip
    nodes = _nodes(env)
    assert [n["id"] for n in nodes] == [relay.registrations[0].reply["node_id"]]
    assert nodes[0]["state"] == "active"
    assert env.metric("idra_agent_syncs_total", 'result="ok"') > 0


def test_deleted_node_is_retired_and_empties_its_interface(env: Env, pyz: Path) -> None:
    """``DELETE /v1/nodes/{id}`` of a running node: the agent is told "retired" when it
    registers again, removes every peer (a revoked client's too), adds none back, and
    stays up to say so."""
    env.start_agent(pyz)
    client = env.add_client()
    assert env.ping(client) == 3
    node_id = _nodes(env)[0]["id"]
    with env.cp.client("operator") as ops:  # as `idra nodes delete --force` does it
        reply = ops.delete(f"/v1/nodes/{node_id}", params={"terminated": "true"})
        assert reply.status_code == 204
    eventually(lambda: env.dump() == {}, what="an empty interface")
    assert env.metric("idra_agent_retired") == 1
    assert env.metric("idra_agent_peers") == 0
    assert env.ping(client, count=2) == 0, "the client no longer gets through"
    key = client.public_key
    env.node.run("wg", "set", env.wg, "peer", key, "allowed-ips", "10.96.0.9/32")
    eventually(lambda: env.dump() == {}, timeout=5, what="a peer added by hand removed")
    calls = env.metric("idra_agent_api_bytes_total", 'direction="sent"')
    time.sleep(2.5)  # several cycles (0.5 s) and scans (1 s)
    assert env.dump() == {}, "never re-added"
    assert env.metric("idra_agent_api_bytes_total", 'direction="sent"') == calls, "no more calls"
    assert env.agent.poll() is None, "stays up"
    log = env.log.read_text()
    assert "this node was retired" in log and "Traceback" not in log
