"""Migrations (Alembic): an earlier release's SQLite file upgrades with its data; two
migrators at once migrate once; ``serve`` refuses a schema it does not know.

Through the installed CLI (``idra controlplane migrate`` / ``serve``) as subprocesses.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from idra.controlplane import migrations
from idra.controlplane.database import parse_url
from idra.controlplane.store import Pool, Refused, Store

from .conftest import database_url, sql, wg_key, write_token

BEFORE_ALEMBIC = Path(__file__).with_name("schema_before_alembic.sql")
POOL = Pool(ipaddress.IPv4Network("10.96.0.0/24"), ipaddress.IPv6Network("fd49::/64"))


def idra(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "idra.cli", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def serve_args(tmp: Path, *args: str) -> list[str]:
    tokens = []
    for kind in ("node", "operator", "client"):
        write_token(tmp / f"{kind}.token", f"{kind}-token-0123456789abcdef")
        tokens += [f"--{kind}-token-file", str(tmp / f"{kind}.token")]
    return ["controlplane", "serve", *tokens, "--insecure-skip-aws-verify",
            "--listen", "127.0.0.1:1", *args]  # fmt: skip


@pytest.mark.only_on("sqlite")
def test_an_earlier_release_sqlite_file_upgrades_with_its_data(tmp_path) -> None:
    """The file the release before Alembic wrote (its schema, triggers, AUTOINCREMENT
    versions, a pruned change log): ``migrate`` keeps every row, owns every key, and
    continues the versions where they were."""
    path = tmp_path / "cp.db"
    node_key, client_key, canary_key = wg_key(), wg_key(), wg_key()
    with sqlite3.connect(path) as db:
        db.executescript(BEFORE_ALEMBIC.read_text())
        db.execute(
            "INSERT INTO nodes (id, instance_id, public_ip, public_key, listen_port, region, "
            "agent_version, registered_at, last_heartbeat_at) "
            "VALUES ('node-1', 'i-1', '203.0.113.1', ?, 51820, 'r', 'v', 0, 0)",
            (node_key,),
        )
        db.execute("INSERT INTO peers VALUES (?, 'node-1', 2, 0)", (client_key,))
        db.execute("INSERT INTO canaries VALUES ('node-1', ?, 240, 0)", (canary_key,))
        for key in (client_key, canary_key, client_key):
            db.execute("INSERT INTO changes (node_id, public_key) VALUES ('node-1', ?)", (key,))
        db.execute("DELETE FROM changes WHERE version < 3")  # pruned: AUTOINCREMENT remembers
    url = f"sqlite:///{path}"
    result = idra("controlplane", "migrate", "--database-url", url)
    assert result.returncode == 0, result.stderr
    assert f"from empty to revision {migrations.head()}" in result.stdout
    again = idra("controlplane", "migrate", "--database-url", url)
    assert f"already at revision {migrations.head()}" in again.stdout
    assert sql(url, "SELECT name FROM sqlite_master WHERE type = 'trigger'") == []
    owners = dict(sql(url, "SELECT public_key, kind FROM key_owners"))
    assert owners == {node_key: "node", client_key: "client", canary_key: "canary"}
    store = Store(path, POOL)
    try:
        assert store.version() == 3, "versions continue where the old log was"
        full = store.peers_since("node-1", None)
        assert {p["public_key"] for p in full["peers"]} == {client_key, canary_key}
        assert store.peers_since("node-1", 3)["peers"] == []
        with pytest.raises(Refused, match="in use by a node"):
            store.assign(node_key, None, 0)
        store.remove_peer(client_key)
        assert store.version() == 4
        assert store.peers_since("node-1", 3)["removed"] == [client_key]
    finally:
        store.close()


def waiting(backend: str, url: str) -> int:
    """Migrators waiting for the lock (SQLite cannot say: assume all after 8 s)."""
    if backend == "sqlite":
        time.sleep(8)
        return 3
    return sql(url, "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")[0][
        0
    ]


def test_two_migrators_at_once_migrate_once(tmp_path, backend) -> None:
    """Replicas starting together on an empty database: while one holds the migration
    lock (here: the test, as if mid-migration) the others wait; then exactly one
    migrates and the rest find the schema at head."""
    url = database_url(tmp_path)
    engine = sa.create_engine(parse_url(url), poolclass=sa.pool.NullPool)
    holder = engine.connect()
    if backend == "postgresql":
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": migrations.LOCK_KEY})
        holder.commit()
    else:  # a migrator that has opened the file (WAL) and holds SQLite's write lock
        holder.exec_driver_sql("PRAGMA journal_mode=WAL")
        holder.exec_driver_sql("BEGIN IMMEDIATE")
    command = [sys.executable, "-m", "idra.cli", "controlplane", "migrate", "--database-url", url]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]  # fmt: skip
    try:
        deadline = time.monotonic() + 30  # until all three wait (they start slowly)
        while time.monotonic() < deadline and waiting(backend, url) < 3:
            if any(run.poll() is not None for run in runs):
                break
            time.sleep(0.2)
        assert [run.poll() for run in runs] == [None] * 3, "they wait for the lock"
    finally:
        holder.rollback()
        if backend == "postgresql":
            holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": migrations.LOCK_KEY})
        holder.close()
        engine.dispose()
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0] * 3, outputs
    said = sorted(out.split(" revision")[0] for out, _ in outputs)
    assert said == ["schema already at"] * 2 + ["schema migrated from empty to"], outputs
    assert sql(url, "SELECT version_num FROM alembic_version") == [(migrations.head(),)]


def test_serve_refuses_a_schema_it_does_not_know(tmp_path, backend) -> None:
    url = database_url(tmp_path)
    assert idra("controlplane", "migrate", "--database-url", url).returncode == 0
    sql(url, "UPDATE alembic_version SET version_num = 'f00d'")  # a newer release's
    result = idra(*serve_args(tmp_path, "--database-url", url))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "f00d is unknown" in result.stderr
    if backend == "postgresql":  # behind head: migrate first (SQLite migrates itself)
        sql(url, "UPDATE alembic_version SET version_num = '0001'")
        result = idra(*serve_args(tmp_path, "--database-url", url))
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "idra controlplane migrate" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--database-url", "mysql://x/y"), "expected sqlite:///PATH or postgresql://"),
        (("--database-url", "not a url"), "expected sqlite:///PATH or postgresql://"),
        (("--db", "x.db", "--database-url", "sqlite:///y.db"), "exactly one of"),
        ((), "exactly one of"),
        (("--database-url", "postgresql://nobody@127.0.0.1:1/none"), "--database-url:"),
    ],
)
@pytest.mark.only_on("sqlite")  # flags only: once is enough
def test_bad_database_flags_are_one_line(tmp_path, args, message) -> None:
    result = idra(*serve_args(tmp_path, *args))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "nobody@" not in result.stderr
