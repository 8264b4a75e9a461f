"""The ops loop's state in the control plane (issue 25): its lease (``PUT/DELETE
/v1/ops/lease/{name}``) and the canary's confirmations (``GET/PUT /v1/ops/canary``),
operator only, on the real server and both stores. Who else may call them is in the
authorization matrix of test_identity; two replicas racing for the lease are in
test_two_servers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa

from idra.controlplane import migrations
from idra.controlplane.database import parse_url

from .conftest import ControlPlane, database_url, sql, start


@pytest.fixture(scope="module")
def server(tmp_path_factory, backend):
    cp = start(tmp_path_factory.mktemp("ops"))
    yield cp
    cp.process.terminate()
    cp.process.wait(10)


def take(cp: ControlPlane, holder: str, seconds: float = 30, name: str = "ops") -> httpx.Response:
    with cp.client("operator") as ops:
        return ops.put(f"/v1/ops/lease/{name}", json={"holder": holder, "seconds": seconds})


def release(cp: ControlPlane, holder: str, name: str = "ops") -> httpx.Response:
    with cp.client("operator") as ops:
        return ops.delete(f"/v1/ops/lease/{name}", params={"holder": holder})


def rows(cp: ControlPlane) -> list[tuple]:
    return sql(cp.database_url, "SELECT * FROM ops_leases ORDER BY name") + sql(
        cp.database_url, "SELECT * FROM canary_listings ORDER BY node_id"
    )


def test_the_lease_is_exclusive_until_it_expires(server: ControlPlane) -> None:
    name = "exclusive"
    first = take(server, "a", 1.5, name)
    assert first.status_code == 200 and first.json()["holder"] == "a", first.text
    refused = take(server, "b", 30, name)
    assert refused.status_code == 409
    assert refused.json()["holder"] == "a" and "held by a" in refused.json()["detail"]
    assert refused.json()["expires_at"] == first.json()["expires_at"], "b changed nothing"
    renewed = take(server, "a", 1.5, name)
    assert renewed.status_code == 200 and renewed.json()["expires_at"] > first.json()["expires_at"]
    time.sleep(0.8)
    assert take(server, "b", 30, name).status_code == 409, "renewed: still a's"
    time.sleep(1.0)  # a's renewal ran out (the database's clock says so)
    taken = take(server, "b", 30, name)
    assert taken.status_code == 200 and taken.json()["holder"] == "b"
    assert take(server, "a", 30, name).status_code == 409, "expired: b holds it, a stands by"


def test_only_the_holder_releases(server: ControlPlane) -> None:
    name = "release"
    assert take(server, "a", 30, name).status_code == 200
    other = release(server, "b", name)
    assert other.status_code == 409 and other.json()["holder"] == "a"
    assert take(server, "b", 30, name).status_code == 409, "b's release left a's lease"
    assert release(server, "a", name).status_code == 204
    assert release(server, "a", name).status_code == 204, "nobody's: idempotent"
    assert take(server, "b", 30, name).status_code == 200, "released: taken at once"


def test_concurrent_takers_one_wins(server: ControlPlane) -> None:
    """Twenty holders at once, five rounds: each round exactly one gets the lease."""
    for round_ in range(5):
        name = f"race-{round_}"
        barrier = threading.Barrier(20)

        def contend(holder: str, name: str = name, barrier=barrier) -> int:
            with server.client("operator") as ops:
                barrier.wait()
                body = {"holder": holder, "seconds": 30}
                return ops.put(f"/v1/ops/lease/{name}", json=body).status_code

        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(contend, [f"h{i}" for i in range(20)]))
        assert sorted(codes) == [200] + [409] * 19, codes


@pytest.mark.parametrize(
    ("name", "body", "where"),
    [
        ("ops", {"holder": "a", "seconds": 0}, "seconds"),
        ("ops", {"holder": "a", "seconds": 3601}, "seconds"),
        ("ops", {"holder": "a", "seconds": "NaN"}, "seconds"),
        ("ops", {"holder": "a"}, "seconds"),
        ("ops", {"holder": "", "seconds": 30}, "holder"),
        ("ops", {"holder": "a b", "seconds": 30}, "holder"),
        ("ops", {"holder": "h" * 129, "seconds": 30}, "holder"),
        ("ops", {"holder": "a", "seconds": 30, "expires_at": 0}, "expires_at"),
        ("o" * 65, {"holder": "a", "seconds": 30}, "path.name"),
        ("OPS", {"holder": "a", "seconds": 30}, "path.name"),
        ("-ops", {"holder": "a", "seconds": 30}, "path.name"),
    ],
)  # fmt: skip
def test_bad_lease_input_is_400_and_changes_nothing(server, name, body, where) -> None:
    before = rows(server)
    with server.client("operator") as ops:
        reply = ops.put(f"/v1/ops/lease/{name}", json=body)
        assert reply.status_code == 400 and reply.json()["detail"].startswith(where), reply.text
        bad_release = ops.delete("/v1/ops/lease/ops", params={"holder": "a b"})
        assert bad_release.status_code == 400, bad_release.text
        assert ops.delete("/v1/ops/lease/ops").status_code == 400, "holder is required"
    assert rows(server) == before


def test_canary_confirmations_round_trip(server: ControlPlane) -> None:
    a, b, gone = (server.register(public_ip=f"203.0.113.{n}") for n in (60, 61, 62))
    with server.client("operator") as ops:
        saved = ops.put("/v1/ops/canary", json={"listed_runs": {a: 1, b: 3, "node-nope": 2}})
        assert saved.status_code == 200, saved.text
        assert saved.json() == {"listed_runs": {a: 1, b: 3}}, "unknown nodes are dropped"
        assert ops.get("/v1/ops/canary").json() == saved.json()
        assert ops.put("/v1/ops/canary", json={"listed_runs": {b: 2, gone: 1}}).json() == {
            "listed_runs": {b: 2, gone: 1}
        }, "replaced, not merged"
        assert ops.delete(f"/v1/nodes/{gone}", params={"terminated": "true"}).status_code == 204
        assert ops.get("/v1/ops/canary").json() == {"listed_runs": {b: 2}}, "gone with its node"
        assert ops.put("/v1/ops/canary", json={"listed_runs": {}}).json() == {"listed_runs": {}}


@pytest.mark.parametrize(
    ("listed", "where"),
    [
        ({"node 1": 1}, "listed_runs.node 1.[key]"),
        ({"n" * 65: 1}, "listed_runs"),
        ({"node-1": 0}, "listed_runs.node-1"),
        ({"node-1": -1}, "listed_runs.node-1"),
        ({"node-1": 1.5}, "listed_runs.node-1"),
        ({"node-1": 10**7}, "listed_runs.node-1"),
        ({f"n{i}": 1 for i in range(2001)}, "listed_runs"),
        ([], "listed_runs"),
    ],
)  # fmt: skip
def test_bad_confirmations_are_400_and_change_nothing(server, listed, where) -> None:
    node = server.register(public_ip="203.0.113.63")
    with server.client("operator") as ops:
        assert ops.put("/v1/ops/canary", json={"listed_runs": {node: 1}}).status_code == 200
        before = rows(server)
        reply = ops.put("/v1/ops/canary", json={"listed_runs": listed})
        assert reply.status_code == 400 and reply.json()["detail"].startswith(where), reply.text
        extra = ops.put("/v1/ops/canary", json={"listed_runs": {}, "holder": "x"})
        assert extra.status_code == 400
    assert rows(server) == before


def test_migration_0003_only_adds(tmp_path, backend) -> None:
    """The release before (schema 0002) runs beside this one: every table and column it
    uses is still there, the same, after the upgrade."""
    url = database_url(tmp_path)
    engine = sa.create_engine(parse_url(url), poolclass=sa.pool.NullPool)

    def schema() -> dict[str, list[tuple]]:
        with engine.connect() as conn:
            found = sa.inspect(conn)
            return {
                table: [
                    (c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)
                ]
                for table in found.get_table_names()
                if table != "alembic_version"
            }

    try:
        with engine.begin() as conn:
            migrations.command.upgrade(migrations._config(conn), "0002")
        before = schema()
        with engine.begin() as conn:
            migrations.command.upgrade(migrations._config(conn), "head")
        after = schema()
    finally:
        engine.dispose()
    assert {t: after[t] for t in before} == before
    assert set(after) - set(before) == {"ops_leases", "canary_listings"}
