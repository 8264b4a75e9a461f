"""The planner without namespaces: delta mode (``plan(full=False)``: changes and a
``removed`` list, nothing else touched) and the drain guard (a draining node never adds
a peer, whatever the control plane offers; updates and removals still apply)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from node_daemon.api import NodeApi
from node_daemon.daemon import Agent, Options
from node_daemon.metrics import Metrics
from node_daemon.peers import plan
from node_daemon.state import PeerTable

from .scripted import random_key

NETS = [ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd49:4452:4100::/64")]


def _peer(key: str, *ips: str) -> dict:
    return {"public_key": key, "allowed_ips": list(ips)}


def test_delta_adds_updates_and_removes_only_what_it_names() -> None:
    kept, moved, gone, ghost = (random_key() for _ in range(4))
    new, heir = random_key(), random_key()
    table = PeerTable([
        (kept, "10.96.0.2/32"), (moved, "10.96.0.3/32"), (gone, "10.96.0.4/32"),
    ])  # fmt: skip
    result = plan(
        [_peer(new, "10.96.0.9/32", "fd49:4452:4100::9/128"), _peer(moved, "10.96.0.5/32"),
         _peer(heir, "10.96.0.4/32")],  # heir: the address of a peer removed in this delta
        [gone, ghost, "not-a-key", 5, None],  # unknown and malformed entries: ignored
        table, NETS, full=False, owners=table.owners,
    )  # fmt: skip
    assert result.upserts == {
        new: "10.96.0.9/32,fd49:4452:4100::9/128",
        moved: "10.96.0.5/32",
        heir: "10.96.0.4/32",
    }
    assert result.removes == [gone], "a delta removes what it lists, not what it omits"
    assert (result.added, result.updated, result.unchanged) == (2, 1, 0)
    assert not result.rejected


def test_delta_keeps_a_peer_it_both_lists_and_removes() -> None:
    key = random_key()
    table = PeerTable([(key, "10.96.0.2/32")])
    result = plan([_peer(key, "10.96.0.2/32")], [key], table, NETS, full=False,
                  owners=table.owners)  # fmt: skip
    assert result.removes == [] and result.unchanged == 1


def test_delta_refuses_an_address_a_live_peer_still_holds() -> None:
    holder, thief = random_key(), random_key()
    table = PeerTable([(holder, "10.96.0.2/32")])
    result = plan([_peer(thief, "10.96.0.2/32")], [], table, NETS, full=False,
                  owners=table.owners)  # fmt: skip
    assert not result.upserts and not result.removes
    assert result.rejected == {"allowed IP owned by another peer": 1}


def test_draining_plan_never_adds_but_updates_and_removes() -> None:
    stays, gone, new = random_key(), random_key(), random_key()
    table = PeerTable([(stays, "10.96.0.2/32"), (gone, "10.96.0.3/32")])
    for full in (True, False):
        result = plan(
            [_peer(stays, "10.96.0.7/32"), _peer(new, "10.96.0.8/32")],
            [] if full else [gone], table, NETS, full=full, accept_new=False,
            owners=table.owners,
        )  # fmt: skip
        assert result.upserts == {stays: "10.96.0.7/32"} and result.added == 0
        assert result.removes == [gone]


def _agent(tmp_path: Path) -> Agent:
    """The agent as ``node-daemon run`` builds it, registered by hand (no I/O here)."""
    opts = Options(interface="wg0", listen_port=51820, region="eu-central-1",
                   public_ip="192.0.2.1", instance_id="i-0planner", state_dir=tmp_path)  # fmt: skip
    api = NodeApi("http://127.0.0.1:9", tmp_path / "node.token")
    agent = Agent(opts, api, driver=None, metrics=Metrics())
    agent.pools = NETS
    agent.live = PeerTable([(random_key(), "10.96.0.2/32")])
    return agent


def test_a_draining_agent_adds_no_peer_the_control_plane_offers(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    (live,) = list(agent.live)
    offered = [_peer(live, "10.96.0.6/32"), _peer(random_key(), "10.96.0.7/32")]
    assert agent.plan(offered, [], full=False).added == 1, "an active agent adds it"
    agent.draining = True
    for full in (True, False):
        result = agent.plan(offered, [], full=full)
        assert result.added == 0 and set(result.upserts) == {live}, "drain: no new peer"


@pytest.mark.parametrize(
    ("ips", "reason"),
    [
        (["10.96.0.0/24"], "allowed IP not a single host"),
        (["10.200.0.1/32"], "allowed IP outside the client pool"),
        (["10.96.0.2/32", "10.96.0.2/32"], "duplicate allowed IP"),
        ([], "no allowed IPs"),
        (["10.96.0.300/32"], "bad allowed IP"),
    ],
)
def test_a_bad_address_rejects_its_peer_alone(ips: list[str], reason: str) -> None:
    good = random_key()
    result = plan([_peer(random_key(), *ips), _peer(good, "10.96.0.9/32")], [], {}, NETS,
                  full=True)  # fmt: skip
    assert result.rejected == {reason: 1} and list(result.upserts) == [good]


def test_a_key_listed_twice_is_rejected_both_times() -> None:
    twice = random_key()
    result = plan([_peer(twice, "10.96.0.2/32"), _peer(twice, "10.96.0.3/32")], [], {}, NETS,
                  full=True)  # fmt: skip
    assert result.rejected == {"duplicate public key": 2} and not result.upserts
