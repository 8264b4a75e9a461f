"""Canary peers (issue 17) on the real control plane: ``POST/DELETE
/v1/nodes/{id}/canary`` (operator only), the reserved canary block of the client pool,
and how canary peers reach a node through the normal peer sync."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from idra.controlplane.store import Pool, Store

from .conftest import ControlPlane, database_url, sql, start, wg_key, write_token
from .test_api import _add, _peers
from .test_identity import snapshot
from .test_sync_v2 import _get, _later, _node

CANARY_V4 = ipaddress.ip_network("10.111.255.240/28")  # the top /28 of 10.96.0.0/12
CANARY_V6 = ipaddress.ip_network("fd49:4452:4100::f:fff0/124")


def _canary(cp: ControlPlane, node_id: str, key: str) -> httpx.Response:
    with cp.client("operator") as ops:
        return ops.post(f"/v1/nodes/{node_id}/canary", json={"public_key": key})


def _uncanary(cp: ControlPlane, node_id: str) -> int:
    with cp.client("operator") as ops:
        return ops.delete(f"/v1/nodes/{node_id}/canary").status_code


def _listed(cp: ControlPlane, node_id: str) -> dict[str, list[str]]:
    return {p["public_key"]: p["allowed_ips"] for p in _peers(cp, node_id).json()["peers"]}


def test_canary_peer_reply_sync_and_idempotency(cp: ControlPlane) -> None:
    node_key = wg_key()
    node_id = cp.register(public_key=node_key)
    cp.heartbeat(node_id)
    user, key = wg_key(), wg_key()
    _add(cp, user)
    register = cp.register_reply(
        cp.instances[node_id], credential=cp.credentials[node_id], public_key=node_key
    )
    assert register.json()["canary_pool"] == {"ipv4": str(CANARY_V4), "ipv6": str(CANARY_V6)}

    reply = _canary(cp, node_id, key)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body == {
        "node_id": node_id,
        "endpoint": "203.0.113.10:51820",
        "public_key": node_key,
        "address": {"ipv4": "10.111.255.240/32", "ipv6": "fd49:4452:4100::f:fff0/128"},
        "peers_version": _peers(cp, node_id).json()["version"],
    }
    assert _listed(cp, node_id)[key] == list(body["address"].values())
    assert _listed(cp, node_id)[user][0] == "10.96.0.2/32", "clients as before"

    again = _canary(cp, node_id, key)
    assert again.json() == body, "the same key again: the same answer"
    delta = _peers(cp, node_id, body["peers_version"]).json()
    assert delta["peers"] == delta["removed"] == [], "and nothing changed"
    assert key not in cp.log.read_text() and "canary peer set" in cp.log.read_text()


def test_the_same_key_has_the_same_address_on_every_node(cp: ControlPlane) -> None:
    a = _node(cp)
    b = cp.register(public_ip="2001:db8::10")
    cp.heartbeat(b)
    key, other = wg_key(), wg_key()
    first = _canary(cp, a, key).json()
    second = _canary(cp, b, key).json()
    assert first["address"] == second["address"]
    assert second["endpoint"] == "[2001:db8::10]:51820"
    assert _canary(cp, a, other).json()["address"]["ipv4"] == "10.111.255.241/32"
    assert _canary(cp, b, key).json()["address"] == first["address"], "b keeps it"


def test_a_new_key_replaces_the_nodes_canary_peer(cp: ControlPlane) -> None:
    node_id = _node(cp)
    old, new = wg_key(), wg_key()
    version = _canary(cp, node_id, old).json()["peers_version"]
    assert _canary(cp, node_id, new).status_code == 200
    delta = _peers(cp, node_id, version).json()
    assert [p["public_key"] for p in delta["peers"]] == [new]
    assert delta["removed"] == [old]
    assert list(_listed(cp, node_id)) == [new]


def test_the_canary_peer_wakes_a_held_long_poll(cp: ControlPlane) -> None:
    node_id = _node(cp)
    version = _get(cp, node_id).json()["version"]
    key = wg_key()
    poster = _later(1.0, lambda: _canary(cp, node_id, key))
    started = time.monotonic()
    reply = _get(cp, node_id, since=version, wait=30).json()
    poster.join()
    assert time.monotonic() - started < 3
    assert [p["public_key"] for p in reply["peers"]] == [key]


def test_removal_by_call_and_with_the_node_record(cp: ControlPlane) -> None:
    a, b = _node(cp), _node(cp)
    key = wg_key()
    version = _canary(cp, a, key).json()["peers_version"]
    _canary(cp, b, key)
    assert _uncanary(cp, a) == 204
    assert _peers(cp, a, version).json()["removed"] == [key]
    assert _uncanary(cp, a) == 204, "idempotent"
    assert _uncanary(cp, "node-nope") == 404
    with cp.client("operator") as ops:
        assert ops.delete(f"/v1/nodes/{b}", params={"terminated": "true"}).status_code == 204
    assert sql(cp.database_url, "SELECT COUNT(*) FROM canaries") == [(0,)]
    c = _node(cp)
    assert _canary(cp, c, wg_key()).json()["address"]["ipv4"] == "10.111.255.240/32", "freed"


def test_refusals_change_nothing(cp: ControlPlane) -> None:
    node_id, drained = _node(cp), _node(cp)
    user, key = wg_key(), wg_key()
    _add(cp, user)
    assert _canary(cp, node_id, key).status_code == 200
    with cp.client("operator") as ops:
        assert ops.post("/node/drain", json={"id": drained, "reason": "blocked"}).status_code
    before = snapshot(cp)
    refusals = [
        (_canary(cp, "node-nope", wg_key()), 404, "no such node"),
        (_canary(cp, drained, wg_key()), 409, "node draining"),
        (_canary(cp, node_id, user), 409, "in use by a client"),
        (_canary(cp, node_id, "A" * 43 + "B"), 400, "public_key"),  # not canonical base64
        (_canary(cp, node_id, "short"), 400, "public_key"),
    ]
    with cp.client("operator") as ops:
        body = {"public_key": wg_key(), "allowed_ips": ["0.0.0.0/0"]}
        refusals.append((ops.post(f"/v1/nodes/{node_id}/canary", json=body), 400, "allowed_ips"))
    with cp.client("client") as client:
        refusals.append((client.post("/v1/peers", json={"public_key": key}), 409, "canary"))
    for reply, status, detail in refusals:
        assert (reply.status_code, detail in reply.text) == (status, True), reply.text
    assert snapshot(cp) == before


def test_a_nodes_key_is_no_canary_key(cp: ControlPlane) -> None:
    node_id, other = _node(cp), wg_key()
    cp.register(public_ip="203.0.113.11", public_key=other)
    reply = _canary(cp, node_id, other)
    assert reply.status_code == 409 and "in use by a node" in reply.text


def test_users_never_get_the_canary_block_even_when_the_pool_runs_out(tmp_path) -> None:
    server = start(tmp_path, "--client-pool-v4", "10.96.0.0/26", "--client-pool-v6", "fd49::/64")
    try:
        node_id = _node(server)
        got = [_add(server, wg_key())["addresses"]["ipv4"] for _ in range(46)]
        assert got == [f"10.96.0.{n}/32" for n in range(2, 48)]
        with server.client("client") as client:
            full = client.post("/v1/peers", json={"public_key": wg_key()})
        assert full.status_code == 503 and "exhausted" in full.text
        canary = _canary(server, node_id, wg_key()).json()
        assert canary["address"] == {"ipv4": "10.96.0.48/32", "ipv6": "fd49::30/128"}
    finally:
        server.process.terminate()
        server.process.wait(10)


def test_the_canary_block_holds_fifteen_keys(tmp_path) -> None:
    server = start(tmp_path, "--client-pool-v4", "10.96.0.0/27", "--client-pool-v6", "fd49::/64")
    try:
        replies = [_canary(server, _node(server), wg_key()) for _ in range(16)]
        assert [r.status_code for r in replies] == [200] * 15 + [503]
        assert "canary address block exhausted" in replies[-1].text
        addresses = {r.json()["address"]["ipv4"] for r in replies[:15]}
        assert addresses == {f"10.96.0.{n}/32" for n in range(16, 31)}
    finally:
        server.process.terminate()
        server.process.wait(10)


def test_a_pool_too_small_for_the_canary_block_is_bad_input(tmp_path) -> None:
    for tokenkind in ("node", "operator", "client"):
        write_token(tmp_path / tokenkind, tokenkind * 8)
    run = subprocess.run(
        [sys.executable, "-m", "idra.cli", "controlplane", "serve", "--db",
         str(tmp_path / "cp.db"), "--listen", "127.0.0.1:1",
         "--node-token-file", str(tmp_path / "node"),
         "--operator-token-file", str(tmp_path / "operator"),
         "--client-token-file", str(tmp_path / "client"),
         "--client-pool-v4", "10.96.0.0/28", "--insecure-skip-aws-verify"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "/27" in run.stderr and "Traceback" not in run.stderr


def test_a_client_from_before_the_reserved_block_keeps_its_slot(tmp_path: Path) -> None:
    """A database from before the block: a client already in it keeps its address, the
    canary takes the next free slot of the block, and freeing it never gives it out."""
    pool = Pool(ipaddress.IPv4Network("10.96.0.0/26"), ipaddress.IPv6Network("fd49::/64"))
    url = database_url(tmp_path)
    store = Store(url, pool)
    sql(url,
        "INSERT INTO nodes (id, instance_id, public_ip, public_key, listen_port, region, "
        "agent_version, registered_at, last_heartbeat_at) "
        "VALUES ('n', 'i-1', '203.0.113.1', 'k', 51820, 'r', 'v', 0, :now)",
        {"now": time.time()})  # fmt: skip
    old = wg_key()
    sql(url, "INSERT INTO peers VALUES (:k, 'n', 48, 0)", {"k": old})
    sql(url, "INSERT INTO key_owners (public_key, kind, slot) VALUES (:k, 'client', 48)",
        {"k": old})  # fmt: skip
    store.close()
    store = Store(url, pool)
    assert store.set_canary("n", wg_key())["address"]["ipv4"] == "10.96.0.49/32"
    assert store.remove_peer(old)
    assert store.assign(wg_key(), None, 0)["addresses"]["ipv4"] == "10.96.0.2/32"
    assert store.set_canary("n", wg_key())["address"]["ipv4"] == "10.96.0.48/32"
    store.close()


@pytest.mark.parametrize("kind", [None, "client", "node"])
def test_canary_calls_need_the_operator_token(cp: ControlPlane, kind: str | None) -> None:
    """The node-credential case (a node asking for a peer on itself or on another) is
    in the authorization matrix of test_identity."""
    node_id = _node(cp)
    path = f"/v1/nodes/{node_id}/canary"
    with cp.client(kind) as http:
        assert http.post(path, json={"public_key": wg_key()}).status_code == 401
        assert http.delete(path).status_code == 401
