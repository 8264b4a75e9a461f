"""Node identity (ARCHITECTURE §3a, issue 13): who may call what, and what a node that
holds NODE_TOKEN, its own credential and its own signed identity document can do to
another node — nothing. Documents are signed for real by the test key the control plane
trusts; refusals are checked against the whole database, not just the status code."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
import sqlalchemy as sa

from idra.controlplane.database import parse_url
from idra.lab.pki import IdentitySigner

from .conftest import ControlPlane, dump, start, wg_key

TABLES = ("nodes", "peers", "canaries", "changes", "retired", "ops_leases", "canary_listings")


def snapshot(cp: ControlPlane) -> dict[str, list]:
    """Every row of every table (one connection, no pool)."""
    engine = sa.create_engine(parse_url(cp.database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            query = "SELECT * FROM {} ORDER BY 1"
            return {t: [tuple(r) for r in conn.execute(sa.text(query.format(t)))] for t in TABLES}
    finally:
        engine.dispose()


def heartbeat_body(**integrity) -> dict:
    return {
        "state": "active",
        "peers_version": 0,
        "stats": {"load1": 0.1, "cpu_pct": 1.0, "mem_pct": 10.0, "rx_bytes": 0, "tx_bytes": 0,
                  "rx_bps": 0.0, "tx_bps": 0.0, "peers": 0, "active_peers": 0},
        "integrity": {"nftables_sha256": "a" * 64, "sysctl_ok": True, "agent_sha256": "b" * 64}
        | integrity,
    }  # fmt: skip


def register_body(cp: ControlPlane | None, identity: dict | None = None, **change) -> dict:
    return {
        "identity": identity or cp.identity(),
        "public_ip": "203.0.113.50",
        "public_key": wg_key(),
        "listen_port": 51820,
        "agent_version": "test",
    } | change


# -- the authorization matrix ---------------------------------------------------------

PRINCIPALS = ("none", "NODE_TOKEN", "node A", "node B", "client", "operator", "metrics")


def test_authorization_matrix(cp: ControlPlane) -> None:
    """Every endpoint x every kind of caller → the exact status; a refusal changes no
    row of the database."""
    a, b, drained, deleted = (cp.register() for _ in range(4))
    cp.heartbeat(a)
    with cp.client("client") as api:
        peer = wg_key()
        assert api.post("/v1/peers", json={"public_key": peer}).status_code == 200
    secrets = {
        "none": None,
        "NODE_TOKEN": cp.tokens["node"],
        "node A": cp.credentials[a],
        "node B": cp.credentials[b],
        "client": cp.tokens["client"],
        "operator": cp.tokens["operator"],
        "metrics": cp.tokens["metrics"],  # --metrics-token-file: GET /metrics only
    }
    calls: dict[str, tuple[str, Callable[[httpx.Client], httpx.Response]]] = {
        "POST /v1/nodes": ("NODE_TOKEN", lambda c: c.post("/v1/nodes", json=register_body(cp))),
        "GET /v1/nodes/A/peers": ("node A", lambda c: c.get(f"/v1/nodes/{a}/peers")),
        "POST /v1/nodes/A/heartbeat": (
            "node A", lambda c: c.post(f"/v1/nodes/{a}/heartbeat", json=heartbeat_body()),
        ),
        "POST /node/drain": (
            "operator", lambda c: c.post("/node/drain", json={"id": drained, "reason": "manual"}),
        ),
        "GET /v1/nodes": ("operator", lambda c: c.get("/v1/nodes")),
        "GET /v1/nodes/A": ("operator", lambda c: c.get(f"/v1/nodes/{a}")),
        "POST /v1/nodes/A/canary": (
            "operator", lambda c: c.post(f"/v1/nodes/{a}/canary", json={"public_key": wg_key()}),
        ),
        "DELETE /v1/nodes/A/canary": ("operator", lambda c: c.delete(f"/v1/nodes/{a}/canary")),
        "DELETE /v1/nodes/D": ("operator", lambda c: c.delete(f"/v1/nodes/{deleted}")),
        "POST /v1/peers": ("client", lambda c: c.post("/v1/peers", json={"public_key": wg_key()})),
        "DELETE /v1/peers/K": ("client", lambda c: c.delete(f"/v1/peers/{peer}")),
        "PUT /v1/ops/lease/ops": (
            "operator", lambda c: c.put("/v1/ops/lease/ops", json={"holder": "me", "seconds": 60}),
        ),
        "DELETE /v1/ops/lease/ops": (
            "operator", lambda c: c.delete("/v1/ops/lease/ops", params={"holder": "me"}),
        ),
        "GET /v1/ops/canary": ("operator", lambda c: c.get("/v1/ops/canary")),
        "PUT /v1/ops/canary": (
            "operator", lambda c: c.put("/v1/ops/canary", json={"listed_runs": {b: 1}}),
        ),
        "GET /openapi.json": ("operator", lambda c: c.get("/openapi.json")),
        "GET /metrics": ("operator|metrics", lambda c: c.get("/metrics")),
        "GET /healthz": ("anyone", lambda c: c.get("/healthz")),
    }  # fmt: skip
    success = {"POST /v1/nodes": 201, "POST /node/drain": 202, "DELETE /v1/nodes/D": 204,
               "DELETE /v1/peers/K": 204, "DELETE /v1/nodes/A/canary": 204,
               "DELETE /v1/ops/lease/ops": 204}  # fmt: skip
    expected, observed, changed = {}, {}, []
    for call, (allowed, send) in calls.items():
        for who in sorted(PRINCIPALS, key=lambda p: p in allowed.split("|")):  # allowed last
            ok = who in allowed.split("|") or allowed == "anyone"
            expected[call, who] = success.get(call, 200) if ok else 401
            before = snapshot(cp)
            headers = {"Authorization": f"Bearer {secrets[who]}"} if secrets[who] else {}
            with httpx.Client(base_url=cp.url, headers=headers, timeout=10) as http:
                observed[call, who] = send(http).status_code
            if not ok and snapshot(cp) != before:
                changed.append((call, who))
    assert observed == expected
    assert changed == [], "a refused call changed the database"


def test_no_docs_and_no_schema_without_the_operator_token(cp: ControlPlane) -> None:
    for path in ("/docs", "/redoc"):
        with cp.client("operator") as ops:
            assert ops.get(path).status_code == 404
    for kind in (None, "node", "client"):
        with cp.client(kind) as http:
            assert http.get("/openapi.json").status_code == 401


def test_credential_is_checked_before_the_body_is_read(cp: ControlPlane) -> None:
    """No credential: 401 whatever the body (too large, not JSON); with one: 413/400."""
    node = cp.register()
    huge, broken = b"x" * (70 * 1024), b"{not json"
    path = f"/v1/nodes/{node}/heartbeat"
    for kind, big, bad in ((None, 401, 401), ("node", 401, 401), (node, 413, 400)):
        with cp.client(kind) as http:
            assert http.post(path, content=huge).status_code == big
            assert http.post(path, content=broken).status_code == bad
            chunked = http.post(path, content=iter([b"{" * 1024] * 70))  # no Content-Length
            assert chunked.status_code == big


# -- attested registration --------------------------------------------------------------


def test_trust_on_first_use_then_only_with_the_credential(cp: ControlPlane) -> None:
    node = cp.register()
    instance, credential = cp.instances[node], cp.credentials[node]
    assert len(credential) >= 43, "256 bits, URL-safe base64"
    assert credential not in dump(cp.database_url), "stored only hashed"

    for wrong in (None, "x" * 43, cp.credentials[cp.register()]):
        reply = cp.register_reply(instance, credential=wrong)
        assert reply.status_code == 409, reply.text
        assert "credential" in reply.json()["detail"]
    with cp.client("operator") as ops:
        record = next(n for n in ops.get("/v1/nodes").json()["nodes"] if n["id"] == node)
    assert record["identity_refusals"] == 3 and record["identity_refused_at"]
    assert (record["state"], record["drain_reason"]) == ("draining", "identity_lost"), (
        "refused, shown, and the reaper replaces it: never silently stuck"
    )
    assert cp.register(instance, credential=credential) == node, "its own agent still can"


@pytest.mark.parametrize(
    "tamper",
    ["other key", "altered document", "wrong account", "bad base64", "signature of another"],
)
def test_forged_or_altered_documents_are_refused(cp: ControlPlane, tamper: str) -> None:
    identity = cp.identity()
    if tamper == "other key":
        identity["signature"] = IdentitySigner().sign(identity["document"])
    elif tamper == "altered document":
        identity["document"] = identity["document"].replace('"c7gn.large"', '"c7gn.xlarge"')
    elif tamper == "wrong account":
        document = IdentitySigner.document(account="123456789012")
        identity = {"document": document, "signature": cp.signer.sign(document)}
    elif tamper == "bad base64":
        identity["signature"] = "!!" + identity["signature"][2:]
    else:
        identity["signature"] = cp.identity()["signature"]
    before = snapshot(cp)
    reply = cp.register_reply(identity=identity)
    assert reply.status_code == 403, reply.text
    assert reply.json()["detail"].startswith("identity refused")
    assert snapshot(cp) == before


def test_public_ip_must_be_global_unicast(cp: ControlPlane) -> None:
    for address in ("10.0.0.1", "127.0.0.1", "169.254.169.254", "100.64.0.1", "224.0.0.1",
                    "fd00::1", "fe80::1", "::1", "0.0.0.0"):  # fmt: skip
        reply = cp.register_reply(public_ip=address)
        assert reply.status_code == 400, address
    assert cp.register(public_ip="203.0.113.7"), "a range this test server allows"


# -- what a compromised node A can do to node B: nothing ------------------------------


@pytest.fixture
def fleet(cp: ControlPlane):
    """Nodes A (the attacker's) and B, both healthy; a client placed on B."""
    a, b = cp.register(public_ip="203.0.113.11"), cp.register(public_ip="203.0.113.12")
    cp.heartbeat(b)
    user = wg_key()
    with cp.client("client") as api:
        placed = api.post("/v1/peers", json={"public_key": user}).json()
    assert placed["node_id"] == b and "instance_id" not in placed, "clients never see it"
    cp.heartbeat(a)
    stolen = {"token": cp.tokens["node"], "credential": cp.credentials[a],
              "identity": cp.identity(cp.instances[a]), "b_user": user}  # fmt: skip
    return a, b, stolen


def _as(cp: ControlPlane, secret: str) -> httpx.Client:
    return httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {secret}"})


def test_a_cannot_read_another_nodes_peers(cp: ControlPlane, fleet) -> None:
    _, b, stolen = fleet
    for secret in (stolen["token"], stolen["credential"]):
        with _as(cp, secret) as http:
            assert http.get(f"/v1/nodes/{b}/peers").status_code == 401
            assert http.get(f"/v1/nodes/{b}/peers", params={"since": 0}).status_code == 401


def test_b_cannot_be_taken_over_by_re_registration(cp: ControlPlane, fleet) -> None:
    _, b, stolen = fleet
    before = snapshot(cp)
    b_instance = cp.instances[b]
    forged = json.loads(stolen["identity"]["document"]) | {"instanceId": b_instance}
    altered = {"document": json.dumps(forged, indent=2),
               "signature": stolen["identity"]["signature"]}  # fmt: skip
    assert cp.register_reply(identity=altered, credential=stolen["credential"]).status_code == 403
    body = register_body(cp, stolen["identity"], instance_id=b_instance)
    with _as(cp, stolen["token"]) as http:
        assert http.post("/v1/nodes", json=body).status_code == 400, "no instance_id field"
    assert snapshot(cp) == before
    with cp.client("client") as api:
        placed = api.post("/v1/peers", json={"public_key": stolen["b_user"]}).json()
    assert (placed["node_id"], placed["endpoint"]) == (b, "203.0.113.12:51820"), "the real B"


def test_a_cannot_take_b_s_key_or_invent_instances(cp: ControlPlane, fleet) -> None:
    _, b, stolen = fleet
    before = snapshot(cp)
    b_key = next(row[3] for row in before["nodes"] if row[0] == b)  # (id, instance, ip, key…)
    reply = cp.register_reply(identity=stolen["identity"], credential=stolen["credential"],
                              public_key=b_key)  # fmt: skip
    assert reply.status_code == 409 and "public key" in reply.json()["detail"]
    attacker = IdentitySigner()
    invented = IdentitySigner.document()
    for identity in (
        {"document": invented, "signature": attacker.sign(invented)},
        {"document": invented, "signature": stolen["identity"]["signature"]},
    ):
        assert cp.register_reply(identity=identity).status_code == 403
    assert snapshot(cp) == before, "no invented node joins the pool"


def test_a_cannot_heartbeat_b_into_compromised(cp: ControlPlane, fleet) -> None:
    _, b, stolen = fleet
    before = snapshot(cp)
    for secret in (stolen["token"], stolen["credential"]):
        with _as(cp, secret) as http:
            reply = http.post(f"/v1/nodes/{b}/heartbeat", json=heartbeat_body(sysctl_ok=False))
            assert reply.status_code == 401
    assert snapshot(cp) == before
    with cp.client("operator") as ops:
        active = ops.get("/v1/nodes", params={"state": "active"}).json()["nodes"]
    assert b in {n["id"] for n in active}


def test_a_cannot_register_an_unrelated_instance(cp: ControlPlane, fleet) -> None:
    """(e): the record the reaper would have terminated cannot come to exist; the reaper
    side (a record pointing at another group's instance survives) is in
    tests/lifecycle/test_reaper.py."""
    _, _, stolen = fleet
    before = snapshot(cp)
    unrelated = json.loads(stolen["identity"]["document"]) | {"instanceId": "i-0feedfacecafe0001"}
    identity = {"document": json.dumps(unrelated, indent=2),
                "signature": stolen["identity"]["signature"]}  # fmt: skip
    with _as(cp, stolen["token"]) as http:
        reply = http.post("/v1/nodes", json=register_body(cp, identity))
    assert reply.status_code == 403
    assert snapshot(cp) == before


# -- regions: the allow-list and region-tied certificates (issue 27, item 2) -------------


def test_regions_outside_the_allow_list_and_certificates_of_another_region(tmp_path) -> None:
    """``--aws-region`` lists the regions that may register; ``REGION=FILE`` trusts a
    certificate only for documents of that region. The test key (no region) vouches for
    any region, so only the allow-list stops ap-south-1; the eu-central-1 key signs a
    us-east-1 document validly, so only the per-region filter stops it."""
    eu = IdentitySigner()
    server = start(
        tmp_path,
        "--iid-cert-file", f"eu-central-1={eu.write_cert(tmp_path / 'eu.pem')}",
        "--aws-region", "eu-central-1", "--aws-region", "us-east-1",
    )  # fmt: skip
    try:

        def signed(signer: IdentitySigner, region: str) -> dict[str, str]:
            document = IdentitySigner.document(region=region)
            return {"document": document, "signature": signer.sign(document)}

        before = snapshot(server)
        other_region = server.register_reply(identity=signed(server.signer, "ap-south-1"))
        assert other_region.status_code == 403
        assert other_region.json()["detail"] == "identity refused: region not allowed"
        wrong_cert = server.register_reply(identity=signed(eu, "us-east-1"))
        assert wrong_cert.status_code == 403
        assert "signature does not verify" in wrong_cert.json()["detail"]
        assert snapshot(server) == before, "nothing joined"
        for signer, region in ((eu, "eu-central-1"), (server.signer, "us-east-1")):
            reply = server.register_reply(identity=signed(signer, region))
            assert reply.status_code == 201, (region, reply.text)
    finally:
        server.process.terminate()
        server.process.wait(10)
