"""The control plane's state in SQLite (WAL): nodes, client peers, and a versioned change
log so a node fetches only what changed since the version it already has.

Every write is one ``BEGIN IMMEDIATE`` transaction. Versions grow monotonically across
the whole database; each change row names the node it concerns. The log is pruned to
the last ``keep_changes`` rows: a ``since`` older than that gets the full list.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL UNIQUE,
    public_ip TEXT NOT NULL,
    public_key TEXT NOT NULL,
    listen_port INTEGER NOT NULL,
    region TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    drain_reason TEXT,
    drain_started_at REAL,
    registered_at REAL NOT NULL,
    last_heartbeat_at REAL,
    reported_state TEXT,
    active_peers INTEGER NOT NULL DEFAULT 0,
    stats TEXT,
    nftables_baseline TEXT,
    root_readonly_baseline INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS peers (
    public_key TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    slot INTEGER NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS peers_node ON peers(node_id);
CREATE TABLE IF NOT EXISTS changes (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    public_key TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_node ON changes(node_id, version);
"""


class NotFound(LookupError):
    pass


class NoCapacity(RuntimeError):
    pass


@dataclass(frozen=True)
class Pool:
    """Client address pools; slot n is the n-th host address (slot 1 is the node's)."""

    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network

    @property
    def slots(self) -> int:
        return min(self.ipv4.num_addresses - 2, 2**32)

    def addresses(self, slot: int) -> tuple[str, str]:
        return (f"{self.ipv4.network_address + slot}/32", f"{self.ipv6.network_address + slot}/128")


class Store:
    """Thread-safe access to the database (one connection, one writer at a time)."""

    def __init__(self, path: Path, pool: Pool, keep_changes: int = 100_000) -> None:
        self.pool, self.keep_changes = pool, keep_changes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(nodes)")}
        if "root_readonly_baseline" not in columns:  # a database from before it
            self._db.execute(
                "ALTER TABLE nodes ADD COLUMN root_readonly_baseline INTEGER NOT NULL DEFAULT 0"
            )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    # -- versions -------------------------------------------------------------------

    @staticmethod
    def _version(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return row[0] if row else 0

    def version(self) -> int:
        with self._read() as db:
            return self._version(db)

    def _log(self, db: sqlite3.Connection, node_id: str, public_key: str) -> None:
        db.execute("INSERT INTO changes (node_id, public_key) VALUES (?, ?)", (node_id, public_key))
        db.execute(
            "DELETE FROM changes WHERE version <= (SELECT MAX(version) FROM changes) - ?",
            (self.keep_changes,),
        )

    # -- nodes ------------------------------------------------------------------------

    def register(self, body: dict[str, Any]) -> str:
        """Create or update the node of ``instance_id``; return its id (idempotent)."""
        with self._write() as db:
            row = db.execute(
                "SELECT id FROM nodes WHERE instance_id = ?", (body["instance_id"],)
            ).fetchone()
            if row:
                db.execute(
                    "UPDATE nodes SET public_ip=?, public_key=?, listen_port=?, region=?, "
                    "agent_version=? WHERE id=?",
                    (
                        body["public_ip"],
                        body["public_key"],
                        body["listen_port"],
                        body["region"],
                        body["agent_version"],
                        row["id"],
                    ),
                )
                return row["id"]
            node_id = "node-" + secrets.token_hex(6)
            db.execute(
                "INSERT INTO nodes (id, instance_id, public_ip, public_key, listen_port, region, "
                "agent_version, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    node_id,
                    body["instance_id"],
                    body["public_ip"],
                    body["public_key"],
                    body["listen_port"],
                    body["region"],
                    body["agent_version"],
                    time.time(),
                ),
            )
            return node_id

    def node(self, node_id: str) -> dict[str, Any]:
        with self._read() as db:
            row = db.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)).fetchone()
        if row is None:
            raise NotFound(node_id)
        return dict(row)

    def nodes(self, state: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM nodes", ()
        if state:
            query, args = query + " WHERE state = ?", (state,)
        with self._read() as db:
            return [dict(row) for row in db.execute(query + " ORDER BY registered_at", args)]

    def heartbeat(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Record a heartbeat; return the node as stored (with its nftables baseline).
        ``root_readonly_baseline`` is returned as it was before: 1 once the node has
        reported a read-only root."""
        with self._write() as db:
            row = db.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)).fetchone()
            if row is None:
                raise NotFound(node_id)
            baseline = row["nftables_baseline"] or body["integrity"]["nftables_sha256"]
            locked = row["root_readonly_baseline"] or body["integrity"].get("root_readonly") is True
            db.execute(
                "UPDATE nodes SET last_heartbeat_at=?, reported_state=?, active_peers=?, "
                "stats=?, nftables_baseline=?, root_readonly_baseline=? WHERE id=?",
                (
                    time.time(),
                    body["state"],
                    body["stats"]["active_peers"],
                    json.dumps(body["stats"]),
                    baseline,
                    int(locked),
                    node_id,
                ),
            )
            return dict(row) | {"nftables_baseline": baseline}

    def drain(self, node_id: str, reason: str) -> None:
        """Take a node out of the pool (idempotent; ``compromised`` overrides a reason)."""
        with self._write() as db:
            row = db.execute("SELECT state, drain_reason FROM nodes WHERE id = ?", (node_id,))
            node = row.fetchone()
            if node is None:
                raise NotFound(node_id)
            if node["state"] == "draining" and reason != "compromised":
                return
            db.execute(
                "UPDATE nodes SET state='draining', drain_reason=?, "
                "drain_started_at=COALESCE(drain_started_at, ?) WHERE id=?",
                (reason, time.time(), node_id),
            )

    def delete_node(self, node_id: str) -> bool:
        """Forget a node and its peers' assignments (clients ask again)."""
        with self._write() as db:
            return db.execute("DELETE FROM nodes WHERE id = ?", (node_id,)).rowcount > 0

    # -- peers --------------------------------------------------------------------------

    def peers_since(self, node_id: str, since: int | None) -> dict[str, Any]:
        """The node's peers: all (``full``) or only those changed after ``since``."""
        with self._read() as db:
            if db.execute("SELECT 1 FROM nodes WHERE id = ?", (node_id,)).fetchone() is None:
                raise NotFound(node_id)
            version = self._version(db)
            oldest = db.execute("SELECT MIN(version) FROM changes").fetchone()[0] or version + 1
            full = since is None or since > version or since < oldest - 1
            if full:
                rows = db.execute(
                    "SELECT public_key, slot FROM peers WHERE node_id = ? ORDER BY slot",
                    (node_id,),
                ).fetchall()
                return {
                    "version": version,
                    "full": True,
                    "peers": [self._peer(r) for r in rows],
                    "removed": [],
                }
            changed = db.execute(
                "SELECT DISTINCT c.public_key, p.slot, p.node_id FROM changes c "
                "LEFT JOIN peers p ON p.public_key = c.public_key "
                "WHERE c.node_id = ? AND c.version > ?",
                (node_id, since),
            ).fetchall()
        peers = [self._peer(r) for r in changed if r["node_id"] == node_id]
        removed = [r["public_key"] for r in changed if r["node_id"] != node_id]
        return {"version": version, "full": False, "peers": peers, "removed": removed}

    def _peer(self, row: sqlite3.Row) -> dict[str, Any]:
        return {
            "public_key": row["public_key"],
            "allowed_ips": list(self.pool.addresses(row["slot"])),
        }

    def assign(self, public_key: str, region: str | None, fresh_after: float) -> dict[str, Any]:
        """Place a client on the least-loaded healthy node (kept there while it is healthy)."""
        with self._write() as db:
            current = db.execute(
                "SELECT p.slot, n.* FROM peers p JOIN nodes n ON n.id = p.node_id "
                "WHERE p.public_key = ?",
                (public_key,),
            ).fetchone()
            if current and current["state"] == "active":
                return self._assignment(current, current["slot"])
            node = db.execute(
                "SELECT n.*, (SELECT COUNT(*) FROM peers p WHERE p.node_id = n.id) AS load "
                "FROM nodes n WHERE n.state = 'active' AND n.last_heartbeat_at >= ? "
                "AND (? IS NULL OR n.region = ?) ORDER BY load, n.registered_at LIMIT 1",
                (fresh_after, region, region),
            ).fetchone()
            if node is None:
                raise NoCapacity(f"no healthy node{f' in {region}' if region else ''}")
            if current:  # moving off a draining node: keep the client's addresses
                slot = current["slot"]
                db.execute(
                    "UPDATE peers SET node_id = ? WHERE public_key = ?", (node["id"], public_key)
                )
                self._log(db, current["id"], public_key)
            else:
                slot = self._free_slot(db)
                db.execute(
                    "INSERT INTO peers (public_key, node_id, slot, created_at) VALUES (?, ?, ?, ?)",
                    (public_key, node["id"], slot, time.time()),
                )
            self._log(db, node["id"], public_key)
            return self._assignment(node, slot)

    def _free_slot(self, db: sqlite3.Connection) -> int:
        row = db.execute(
            "SELECT MIN(s) FROM (SELECT 2 AS s UNION ALL SELECT slot + 1 FROM peers) "
            "WHERE s NOT IN (SELECT slot FROM peers)"
        ).fetchone()
        if row[0] > self.pool.slots:
            raise NoCapacity("client address pool exhausted")
        return row[0]

    def _assignment(self, node: sqlite3.Row, slot: int) -> dict[str, Any]:
        ipv4, ipv6 = self.pool.addresses(slot)
        host = node["public_ip"]
        endpoint = (
            f"[{host}]:{node['listen_port']}" if ":" in host else f"{host}:{node['listen_port']}"
        )
        return {
            "node_id": node["id"],
            "instance_id": node["instance_id"],
            "region": node["region"],
            "endpoint": endpoint,
            "node_public_key": node["public_key"],
            "addresses": {"ipv4": ipv4, "ipv6": ipv6},
        }

    def remove_peer(self, public_key: str) -> bool:
        with self._write() as db:
            row = db.execute(
                "SELECT node_id FROM peers WHERE public_key = ?", (public_key,)
            ).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM peers WHERE public_key = ?", (public_key,))
            self._log(db, row["node_id"], public_key)
            return True

    def close(self) -> None:
        self._db.close()

    # -- observability -------------------------------------------------------------------

    def ping(self) -> None:
        """Read the database once (raises ``sqlite3.Error`` when it does not answer)."""
        with self._read() as db:
            db.execute("SELECT COUNT(*) FROM nodes").fetchone()

    def counts(self) -> dict[str, Any]:
        """Aggregates only: nodes by state, peers, reported active peers, change-log rows."""
        with self._read() as db:
            states = db.execute(
                "SELECT state, COUNT(*), SUM(active_peers) FROM nodes GROUP BY state"
            )
            by_state = {row[0]: (row[1], row[2] or 0) for row in states}
            return {
                "nodes": {state: n for state, (n, _) in by_state.items()},
                "active_peers": sum(active for _, active in by_state.values()),
                "peers": db.execute("SELECT COUNT(*) FROM peers").fetchone()[0],
                "changes": db.execute("SELECT COUNT(*) FROM changes").fetchone()[0],
                "version": self._version(db),
            }
