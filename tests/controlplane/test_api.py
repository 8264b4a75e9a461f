"""Node API v1 against the real control plane (uvicorn, SQLite) over HTTP and HTTPS.

One server for the module (starting one costs about a second): each test places its
clients in a region of its own and looks only at its own nodes; the tests that need a
server of their own (an old database, TLS) start one.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import sqlite3
import string
import threading
from pathlib import Path

import pytest

from .conftest import ControlPlane, start, wg_key


@pytest.fixture(scope="module")
def cp(tmp_path_factory, backend):
    """Keeps 50 changes; knows the agent build the tests report (``b`` * 64)."""
    folder = tmp_path_factory.mktemp("cp")
    server = start(folder, "--keep-changes", "50", "--agent-sha256", "b" * 64)
    yield server
    server.process.terminate()
    server.process.wait(10)


def _region() -> str:
    """A region of this test's own, so its clients land only on its nodes."""
    return "xx-" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(10)) + "-1"


def _nodes(cp: ControlPlane, state: str | None = None) -> dict[str, dict]:
    with cp.client("operator") as ops:
        listed = ops.get("/v1/nodes", params={"state": state} if state else {}).json()["nodes"]
    return {node["id"]: node for node in listed}


def test_register_is_idempotent_per_instance(cp: ControlPlane) -> None:
    first = cp.register("i-0abc")
    credential = cp.credentials[first]
    assert cp.register("i-0abc") == first, "same instance, with its credential: same node"
    assert cp.credentials[first] == credential, "the credential stays (lost replies are safe)"
    assert cp.register("i-0def") != first
    reply = cp.register_reply("i-0abc", public_ip="2001:db8::10", credential=credential)
    body = reply.json()
    assert reply.status_code == 201 and body["node_id"] == first
    assert body["heartbeat_interval_s"] == 10
    assert body["client_pool"] == {"ipv4": "10.96.0.0/12", "ipv6": "fd49:4452:4100::/64"}
    assert len(base64.urlsafe_b64decode(body["node_credential"] + "=")) >= 32, "≥ 256 bits"


@pytest.mark.parametrize("kind", [None, "wrong", "client", "operator"])
def test_registration_needs_the_node_token(cp: ControlPlane, kind: str | None) -> None:
    cp.tokens["wrong"] = "not-the-token-at-all"
    before = _nodes(cp)
    with cp.client(kind) as client:
        reply = client.post("/v1/nodes", json={"identity": cp.identity(), "public_key": wg_key()})
    assert reply.status_code == 401
    assert _nodes(cp) == before, "nothing changed"


def test_operator_and_client_calls_refuse_other_tokens(cp: ControlPlane) -> None:
    """Every operator route (from the schema, plus /metrics) refuses the client token, the
    node token and a node credential; every client route refuses the operator's and the
    nodes'. Nothing changes."""
    node_id, key = cp.register(), wg_key()
    with cp.client("operator") as ops:
        schema = ops.get("/openapi.json").json()
    routes: dict[str, list[tuple[str, str]]] = {"operator": [("GET", "/metrics"),
                                                             ("GET", "/openapi.json")]}  # fmt: skip
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            path = path.replace("{node_id}", node_id).replace("{public_key}", key)
            routes.setdefault(operation["x-idra-auth"], []).append((method.upper(), path))
    assert len(routes["operator"]) >= 7 and len(routes["client"]) >= 2
    before = _nodes(cp)
    for policy, others in (("operator", ("client", "node", node_id)),
                           ("client", ("operator", "node", node_id))):  # fmt: skip
        for method, path in routes[policy]:
            for kind in others:
                with cp.client(kind) as http:
                    body = {} if method in ("POST", "PUT", "PATCH") else None
                    reply = http.request(method, path, json=body)
                assert reply.status_code == 401, (kind, method, path)
    assert _nodes(cp) == before
    assert before[node_id]["state"] == "active"


@pytest.mark.parametrize(
    "change",
    [
        {"public_key": "short"},
        {"listen_port": 70000},
        {"public_ip": "not-an-ip"},
        {"unexpected": 1},
        {"instance_id": "i-0abc"},
        {"identity": {"document": "{}"}},
        {"agent_version": "two words"},
    ],
)
def test_bad_bodies_are_400_with_a_message(cp: ControlPlane, change: dict) -> None:
    body = {
        "identity": cp.identity(),
        "public_ip": "203.0.113.10",
        "public_key": wg_key(),
        "listen_port": 51820,
        "agent_version": "1",
    } | change
    with cp.client("node") as node:
        reply = node.post("/v1/nodes", json=body)
    assert reply.status_code == 400
    assert reply.json()["detail"]


def _peers(cp: ControlPlane, node_id: str, since: int | None = None):
    with cp.client(node_id) as node:
        params = {} if since is None else {"since": since}
        return node.get(f"/v1/nodes/{node_id}/peers", params=params)


def _add(cp: ControlPlane, key: str, region: str | None = None) -> dict:
    with cp.client("client") as client:
        reply = client.post("/v1/peers", json={"public_key": key, "region": region})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_peers_delta_sync(cp: ControlPlane) -> None:
    region = _region()
    node_id = cp.register(region=region)
    cp.heartbeat(node_id)
    keys = [wg_key() for _ in range(3)]
    for key in keys:
        _add(cp, key, region)
    full = _peers(cp, node_id).json()
    assert full["full"] and {p["public_key"] for p in full["peers"]} == set(keys)
    version = full["version"]

    idle = _peers(cp, node_id, version)
    assert idle.json() == {"version": version, "full": False, "peers": [], "removed": []}
    assert len(idle.content) < 1024

    new = wg_key()
    _add(cp, new, region)
    with cp.client("client") as client:
        assert client.delete(f"/v1/peers/{keys[0]}").status_code == 204
        assert client.delete(f"/v1/peers/{keys[0]}").status_code == 404
    delta = _peers(cp, node_id, version).json()
    assert not delta["full"]
    assert [p["public_key"] for p in delta["peers"]] == [new]
    assert delta["removed"] == [keys[0]]
    assert delta["version"] == version + 2

    assert _peers(cp, node_id, delta["version"] + 5).json()["full"], "unknown version"


def test_too_old_version_gets_the_full_list(cp: ControlPlane) -> None:
    region = _region()
    node_id = cp.register(region=region)
    cp.heartbeat(node_id)
    first = _add(cp, wg_key(), region)
    assert first["node_id"] == node_id
    for _ in range(60):  # the server keeps 50 changes
        _add(cp, wg_key(), region)
    reply = _peers(cp, node_id, 1).json()
    assert reply["full"] and len(reply["peers"]) == 61


def test_addresses_unique_inside_the_pool(cp: ControlPlane) -> None:
    region = _region()
    cp.heartbeat(cp.register(region=region))
    seen = set()
    for _ in range(20):
        addresses = _add(cp, wg_key(), region)["addresses"]
        v4 = ipaddress.ip_interface(addresses["ipv4"])
        v6 = ipaddress.ip_interface(addresses["ipv6"])
        assert v4.network.prefixlen == 32 and v6.network.prefixlen == 128
        assert v4.ip in ipaddress.ip_network("10.96.0.0/12")
        assert v6.ip in ipaddress.ip_network("fd49:4452:4100::/64")
        assert str(v4.ip) != "10.96.0.1", "the node's own address"
        seen.add(addresses["ipv4"])
    assert len(seen) == 20


def test_assignment_balances_by_region_and_is_idempotent(cp: ControlPlane) -> None:
    one, two = _region(), _region()
    a, b, c = cp.register(region=one), cp.register(region=one), cp.register(region=two)
    for node_id in (a, b, c):
        cp.heartbeat(node_id)
    placed = [_add(cp, wg_key(), one)["node_id"] for _ in range(4)]
    assert sorted(placed) == sorted([a, a, b, b])
    key = wg_key()
    assert _add(cp, key, two)["node_id"] == c
    assert _add(cp, key, two) == _add(cp, key, two)
    with cp.client("client") as client:
        nowhere = client.post("/v1/peers", json={"public_key": wg_key(), "region": _region()})
    assert nowhere.status_code == 503


def test_drain_leaves_the_pool_and_clients_move(cp: ControlPlane) -> None:
    region = _region()
    a, b = cp.register(region=region), cp.register(region=region)
    cp.heartbeat(a)
    key = wg_key()
    assignment = _add(cp, key, region)
    assert assignment["node_id"] == a
    cp.heartbeat(b)
    with cp.client("operator") as ops:
        assert ops.post("/node/drain", json={"id": a, "reason": "blocked"}).status_code == 202
        assert (
            ops.post("/node/drain", json={"id": "node-nope", "reason": "blocked"}).status_code
            == 404
        )
    draining = _nodes(cp, "draining")
    assert a in draining and b not in draining
    assert draining[a]["drain_reason"] == "blocked" and draining[a]["drain_started_at"]
    assert cp.heartbeat(a) == {
        "drain": True,
        "drain_reason": "blocked",
        "peers_version": _peers(cp, a).json()["version"],
    }
    assert _add(cp, wg_key(), region)["node_id"] == b, "never assigned to a draining node"
    version = _peers(cp, a).json()["version"]
    moved = _add(cp, key, region)
    assert moved["node_id"] == b and moved["addresses"] == assignment["addresses"]
    assert _peers(cp, a, version).json()["removed"] == [key]


def test_delete_node(cp: ControlPlane) -> None:
    node_id = cp.register()
    with cp.client("operator") as ops:
        assert ops.delete(f"/v1/nodes/{node_id}").status_code == 204
        assert ops.delete(f"/v1/nodes/{node_id}").status_code == 404
    assert _peers(cp, node_id).status_code == 401, "its credential died with it"
    again = cp.register_reply(cp.instances[node_id], credential=cp.credentials[node_id])
    assert again.status_code == 409 and "retired" in again.json()["detail"]


@pytest.mark.parametrize(
    "integrity",
    [{"nftables_sha256": "c" * 64}, {"sysctl_ok": False}, {"agent_sha256": "d" * 64}],
    ids=["ruleset changed", "sysctl drift", "unknown agent"],
)
def test_integrity_mismatch_drains_as_compromised(cp: ControlPlane, integrity: dict) -> None:
    node_id = cp.register()
    assert cp.heartbeat(node_id)["drain"] is False, "first report is the baseline"
    reply = cp.heartbeat(node_id)
    assert (reply["drain"], reply["drain_reason"]) == (False, None)
    assert reply["peers_version"] == _peers(cp, node_id).json()["version"]
    reply = cp.heartbeat(node_id, **integrity)
    assert reply["drain"] is True and reply["drain_reason"] == "compromised"


def test_unknown_integrity_is_no_verdict(cp: ControlPlane) -> None:
    """An agent that cannot read its ruleset or sysctl values says so (null): accepted,
    neither a baseline nor a drain; a known mismatch after it still drains."""
    node_id = cp.register()
    assert cp.heartbeat(node_id, nftables_sha256=None, sysctl_ok=None)["drain"] is False
    assert cp.heartbeat(node_id)["drain"] is False, "first known ruleset is the baseline"
    assert cp.heartbeat(node_id, nftables_sha256=None)["drain"] is False
    assert cp.heartbeat(node_id, nftables_sha256="c" * 64)["drain"] is True


@pytest.mark.parametrize(
    "unlocked", [{"root_readonly": False}, {}], ids=["root writable", "field dropped"]
)
def test_root_made_writable_after_read_only_drains_as_compromised(
    cp: ControlPlane, unlocked: dict
) -> None:
    node_id = cp.register()
    for _ in range(2):  # booting: the root is still writable, nothing to compare yet
        assert cp.heartbeat(node_id, root_readonly=False)["drain"] is False
    for _ in range(2):  # locked down: this is now the node's baseline
        assert cp.heartbeat(node_id, root_readonly=True)["drain"] is False
    reply = cp.heartbeat(node_id, **unlocked)
    assert reply["drain"] is True and reply["drain_reason"] == "compromised"
    assert cp.heartbeat(node_id, root_readonly=True)["drain_reason"] == "compromised", (
        "locking again does not undo it"
    )
    assert _nodes(cp, "draining")[node_id]["drain_reason"] == "compromised"


def test_root_never_read_only_is_no_compromise(cp: ControlPlane) -> None:
    """A lab node, or an agent from before the read-only root, never locks its root."""
    writable, old_agent = cp.register(), cp.register()
    for _ in range(3):
        assert cp.heartbeat(writable, root_readonly=False)["drain"] is False
        assert cp.heartbeat(old_agent)["drain"] is False


def test_root_readonly_must_be_a_boolean(cp: ControlPlane) -> None:
    node_id = cp.register()
    cp.heartbeat(node_id, root_readonly=True)
    stats = dict.fromkeys(("load1", "cpu_pct", "mem_pct", "rx_bps", "tx_bps"), 0.0)
    stats |= dict.fromkeys(("rx_bytes", "tx_bytes", "peers", "active_peers"), 0)
    integrity = {"nftables_sha256": "a" * 64, "sysctl_ok": True, "agent_sha256": "b" * 64}
    body = {"state": "active", "peers_version": 0, "stats": stats, "integrity": integrity}
    with cp.client(node_id) as node:
        for value in ("maybe", "true", 1, [True], {"ro": 1}):
            body["integrity"]["root_readonly"] = value
            reply = node.post(f"/v1/nodes/{node_id}/heartbeat", json=body)
            assert reply.status_code == 400, value
            assert reply.json()["detail"].startswith("integrity.root_readonly:")
    assert cp.heartbeat(node_id, root_readonly=True)["drain"] is False, "nothing changed"


@pytest.mark.only_on("sqlite")
def test_database_from_before_root_readonly_is_upgraded(tmp_path) -> None:
    """A SQLite file of a release before root_readonly (PostgreSQL never ran one)."""
    schema = (Path(__file__).parent / "schema_before_alembic.sql").read_text()
    old_schema = schema.replace(",\n    root_readonly_baseline INTEGER NOT NULL DEFAULT 0", "")
    assert old_schema != schema
    sqlite3.connect(tmp_path / "cp.db").executescript(old_schema)
    server = start(tmp_path)
    try:
        node_id = server.register()
        assert server.heartbeat(node_id, root_readonly=True)["drain"] is False
        assert server.heartbeat(node_id, root_readonly=False)["drain_reason"] == "compromised"
    finally:
        server.process.terminate()
        server.process.wait(10)


def test_concurrent_writes_keep_versions_consistent(cp: ControlPlane) -> None:
    region = _region()
    node_id = cp.register(region=region)
    cp.heartbeat(node_id)
    before = _peers(cp, node_id).json()["version"]
    errors = []

    def worker() -> None:
        try:
            for _ in range(10):
                _add(cp, wg_key(), region)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    full = _peers(cp, node_id).json()
    assert len(full["peers"]) == 40 and full["version"] == before + 40
    assert len({p["allowed_ips"][0] for p in full["peers"]}) == 40


def test_https_with_the_lab_ca(tmp_path) -> None:
    server = start(tmp_path, tls=True)
    try:
        assert server.url.startswith("https://")
        node_id = server.register()
        assert node_id.startswith("node-")
    finally:
        server.process.terminate()
        server.process.wait(10)


def test_logs_hold_no_peer_key_or_client_address(cp: ControlPlane) -> None:
    region = _region()
    node_id = cp.register(region=region)
    cp.heartbeat(node_id)
    keys = [wg_key() for _ in range(3)]
    addresses = [_add(cp, key, region)["addresses"] for key in keys]
    with cp.client("client") as client:
        client.delete(f"/v1/peers/{keys[0]}")
    with cp.client("operator") as ops:
        ops.post("/node/drain", json={"id": node_id, "reason": "manual"})
        ops.get("/healthz")  # the drain is logged before its reply: the log has it
    log = cp.log.read_text()
    assert "registered" in log, "the log is being written"
    for key, address in zip(keys, addresses, strict=True):
        assert key not in log
        assert address["ipv4"].split("/")[0] not in log
        assert address["ipv6"].split("/")[0] not in log
