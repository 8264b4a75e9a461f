"""The control plane's state in SQLite (WAL): nodes, client peers, and a versioned change
log so a node fetches only what changed since the version it already has.

Every write is one ``BEGIN IMMEDIATE`` transaction. Versions grow monotonically across
the whole database; each change row names the node it concerns. The log is pruned to
the last ``keep_changes`` rows and to ``change_retention_s`` seconds: a ``since`` older
than that gets the full list, so a removed client's key is kept no longer than a node
needs to learn of its removal. The database file is created 0600.

Node credentials are stored only as sha256 (they are 256-bit random, so a plain hash
suffices) and compared in constant time. A deleted node's instance id is kept as
retired: its identity document can never register again.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idra.controlplane.notify import ChangeNotifier, LocalNotifier
from idra.controlplane.slots import SlotIndex

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
    root_readonly_baseline INTEGER NOT NULL DEFAULT 0,
    account_id TEXT,
    credential_sha256 TEXT,
    identity_refusals INTEGER NOT NULL DEFAULT 0,
    identity_refused_at REAL
);
CREATE TABLE IF NOT EXISTS retired (instance_id TEXT PRIMARY KEY, retired_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS peers (
    public_key TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    slot INTEGER NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS peers_node ON peers(node_id);
CREATE INDEX IF NOT EXISTS peers_node_slot ON peers(node_id, slot);
CREATE TABLE IF NOT EXISTS canaries (
    node_id TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    slot INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS canaries_key ON canaries(public_key);
CREATE TABLE IF NOT EXISTS changes (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE INDEX IF NOT EXISTS changes_node ON changes(node_id, version);
CREATE INDEX IF NOT EXISTS changes_age ON changes(created_at);
CREATE INDEX IF NOT EXISTS nodes_key ON nodes(public_key);
"""
# One key, one owner: a WireGuard public key belongs to one node, one client peer or the
# canary (whose one key is on many nodes). The database refuses a clash inside the
# writing transaction, whoever writes; the message is the 409's reason.
KEY_CLASH = "public key in use by"
KEY_OWNERS = {"nodes": "a node", "peers": "a client", "canaries": "a canary peer"}


def _key_triggers() -> str:
    """Before a key is written to a table: refuse it when another owner holds it. Client
    keys are the peers' primary key already; a node's key is checked against the other
    nodes too; the canary's one key may be on many nodes."""
    sql = []
    for table in KEY_OWNERS:
        checks = []
        for other, owner in KEY_OWNERS.items():
            if other == table and table != "nodes":
                continue
            itself = " AND id != NEW.id" if other == table else ""
            owner = "another node" if other == table else owner
            held = f"SELECT 1 FROM {other} WHERE public_key = NEW.public_key{itself}"  # noqa: S608
            checks.append(f"SELECT RAISE(ABORT, '{KEY_CLASH} {owner}') WHERE EXISTS ({held});")
        for event in ("INSERT", "UPDATE OF public_key"):
            name = f"{table}_key_{event.split()[0].lower()}"
            sql.append(f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {event} ON {table} "
                       f"BEGIN {' '.join(checks)} END;")  # fmt: skip
    return "\n".join(sql)


SCHEMA += _key_triggers()

# Columns added since the first schema: an older database gains them at start (its
# nodes have no credential yet; each gets one when it next registers with a signed
# identity document).
ADDED_COLUMNS = {
    "nodes": ("root_readonly_baseline INTEGER NOT NULL DEFAULT 0",
              "account_id TEXT", "credential_sha256 TEXT",
              "identity_refusals INTEGER NOT NULL DEFAULT 0", "identity_refused_at REAL"),
    "changes": ("created_at REAL NOT NULL DEFAULT 0",),
}  # fmt: skip


class NotFound(LookupError):
    pass


class NoCapacity(RuntimeError):
    pass


class Refused(RuntimeError):
    """A registration (or a canary peer) that must not be: the message says why (no
    secrets in it)."""


def credential_hash(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def new_credential() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


CANARY_BITS = 4  # the top /28 of the IPv4 pool (and the same offsets in IPv6) …
CANARY_BLOCK = 2**CANARY_BITS  # … is reserved for canary peers


@dataclass(frozen=True)
class Pool:
    """Client address pools; slot n is the n-th host address (slot 1 is the node's).

    The top ``CANARY_BLOCK`` addresses (15 slots: the last is the broadcast address)
    are reserved for canary peers: ``POST /v1/peers`` never hands them to a user.
    """

    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network

    def __post_init__(self) -> None:
        if self.ipv4.num_addresses < 2 * CANARY_BLOCK:
            raise ValueError(f"{self.ipv4}: at least a /27 (its top /28 is for canary peers)")
        if self.ipv6.num_addresses < self.ipv4.num_addresses:
            raise ValueError(f"{self.ipv6} holds fewer addresses than {self.ipv4}")

    @property
    def slots(self) -> int:
        return min(self.ipv4.num_addresses - 2, 2**32)

    @property
    def user_slots(self) -> int:
        """The highest slot a user may get (the canary block lies above)."""
        return self.ipv4.num_addresses - CANARY_BLOCK - 1

    @property
    def canary_slots(self) -> range:
        return range(self.user_slots + 1, self.slots + 1)

    def canary_networks(self) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
        """The reserved block as prefixes (a /28 and a /124): what the agent excludes
        from its count of active users."""
        first = self.user_slots + 1
        return (
            ipaddress.IPv4Network((self.ipv4.network_address + first, 32 - CANARY_BITS)),
            ipaddress.IPv6Network((self.ipv6.network_address + first, 128 - CANARY_BITS)),
        )

    def addresses(self, slot: int) -> tuple[str, str]:
        return (f"{self.ipv4.network_address + slot}/32", f"{self.ipv6.network_address + slot}/128")


PAGE = 2000  # peers per page of a full list; each page is read under the lock alone
MAX_PAGE = 10_000


class Store:
    """Thread-safe access to the database (one connection, one writer at a time).

    Besides the database: a free-slot index and each node's peer count (rebuilt at
    start, kept in step by every write, undone on rollback), so an assignment costs
    O(log n); and a :class:`ChangeNotifier` told, after each commit, which nodes'
    peers changed (long-polls, ARCHITECTURE §3b).
    """

    def __init__(
        self,
        path: Path,
        pool: Pool,
        keep_changes: int = 100_000,
        change_retention_s: float = 3600,
        notifier: ChangeNotifier | None = None,
    ) -> None:
        self.pool, self.keep_changes = pool, keep_changes
        self.change_retention_s = change_retention_s
        self._lock = threading.Lock()
        self._pruned_at = 0.0
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        Path(path).chmod(0o600)  # WAL and shared-memory files inherit this mode
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self._db.executescript(SCHEMA)
        self.notifier: ChangeNotifier = notifier or LocalNotifier()
        self._touched: set[str] = set()  # nodes whose peers changed in this transaction
        self._undo: list = []  # in-memory index changes to revert on rollback
        used = (row[0] for row in self._db.execute("SELECT slot FROM peers ORDER BY slot"))
        self._slots = SlotIndex(used, 2, pool.user_slots)
        self._load: dict[str, int] = dict(
            self._db.execute("SELECT node_id, COUNT(*) FROM peers GROUP BY node_id").fetchall()
        )

    def _migrate(self) -> None:
        for table, columns in ADDED_COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if have and column.split()[0] not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._touched, self._undo = set(), []
            try:
                yield self._db
            except BaseException as exc:
                self._db.execute("ROLLBACK")
                for undo in reversed(self._undo):
                    undo()
                if isinstance(exc, sqlite3.IntegrityError) and KEY_CLASH in str(exc):
                    raise Refused(str(exc)) from None  # one key, one owner (_key_triggers)
                raise
            self._db.execute("COMMIT")
            touched = self._touched
        if touched:
            self.notifier.publish(touched)

    def _count(self, node_id: str, delta: int) -> None:
        """Change a node's peer count (undone if the transaction rolls back)."""
        self._load[node_id] = self._load.get(node_id, 0) + delta
        self._undo.append(lambda: self._load.__setitem__(node_id, self._load[node_id] - delta))

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
        self._touched.add(node_id)
        db.execute(
            "INSERT INTO changes (node_id, public_key, created_at) VALUES (?, ?, ?)",
            (node_id, public_key, time.time()),
        )
        db.execute(
            "DELETE FROM changes WHERE version <= (SELECT MAX(version) FROM changes) - ?",
            (self.keep_changes,),
        )
        self._prune(db)

    def _prune(self, db: sqlite3.Connection) -> None:
        """Forget changes older than the retention (at most every few seconds)."""
        now = time.time()
        if now - self._pruned_at >= min(10.0, self.change_retention_s):
            db.execute("DELETE FROM changes WHERE created_at < ?", (now - self.change_retention_s,))
            self._pruned_at = now

    # -- nodes ------------------------------------------------------------------------

    def needs_confirmation(self, instance_id: str, public_ip: str) -> bool:
        """Whether AWS must confirm this registration: a first use of the instance, or its
        node now reports another ``public_ip``. A retired instance is refused anyway."""
        with self._read() as db:
            if db.execute("SELECT 1 FROM retired WHERE instance_id = ?", (instance_id,)).fetchone():
                return False
            row = db.execute(
                "SELECT public_ip FROM nodes WHERE instance_id = ?", (instance_id,)
            ).fetchone()
        return row is None or row["public_ip"] != public_ip

    def register(
        self, instance_id: str, region: str, account_id: str, body: dict[str, Any],
        credential: str | None,
    ) -> tuple[str, str]:  # fmt: skip
        """Bind a first-seen instance (trust on first use) or update a bound one that
        presents its credential; return ``(node_id, credential)``.

        The credential the agent sends (``X-Node-Credential``, chosen before its first
        call) is bound on first use, so a retry after a lost reply finds the same node;
        an agent that sends none gets one chosen here. A bound instance without its
        credential (a reboot lost it, or a replay) is refused (:class:`Refused`, naming
        no node): the refusal is counted on its record and the node drains as
        ``identity_lost`` (``compromised`` stays), so the reaper replaces it at once
        instead of leaving it stuck. A retired instance, or a key that another node, a
        client or the canary holds, is refused too.
        """
        with self._write() as db:
            if db.execute("SELECT 1 FROM retired WHERE instance_id = ?", (instance_id,)).fetchone():
                raise Refused("instance retired")
            row = db.execute("SELECT * FROM nodes WHERE instance_id = ?", (instance_id,)).fetchone()
            fields = (body["public_ip"], body["public_key"], body["listen_port"],
                      body["agent_version"])  # fmt: skip
            if row is None:
                node_id, credential = "node-" + secrets.token_hex(6), credential or new_credential()
                db.execute(
                    "INSERT INTO nodes (id, instance_id, public_ip, public_key, listen_port, "
                    "agent_version, region, account_id, credential_sha256, registered_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (node_id, instance_id, *fields, region, account_id,
                     credential_hash(credential), time.time()),
                )  # fmt: skip
                return node_id, credential
            stored = row["credential_sha256"]
            lost = stored is not None and (
                credential is None or not hmac.compare_digest(credential_hash(credential), stored)
            )
            if not lost:  # its own agent (or a record from before attestation: bind it now)
                credential = credential or new_credential()
                db.execute(
                    "UPDATE nodes SET public_ip=?, public_key=?, listen_port=?, agent_version=?, "
                    "credential_sha256=? WHERE id=?",
                    (*fields, credential_hash(credential), row["id"]),
                )
                return row["id"], credential
            now = time.time()
            db.execute(
                "UPDATE nodes SET identity_refusals = identity_refusals + 1, "
                "identity_refused_at = ?, state = 'draining', drain_reason = CASE "
                "WHEN drain_reason = 'compromised' THEN drain_reason ELSE 'identity_lost' END, "
                "drain_started_at = COALESCE(drain_started_at, ?) WHERE id = ?",
                (now, now, row["id"]),
            )
        raise Refused("instance already bound to a node; its node credential is required")

    def credential_ok(self, node_id: str, credential: str) -> bool:
        """``credential`` is this node's (constant-time compare; unknown node: False)."""
        given = credential_hash(credential)
        with self._read() as db:
            row = db.execute(
                "SELECT credential_sha256 FROM nodes WHERE id = ?", (node_id,)
            ).fetchone()
        stored = (row and row["credential_sha256"]) or ""
        return hmac.compare_digest(given, stored)

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
            self._prune(db)
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
        """Forget a node and its peers' assignments (clients ask again); its instance is
        retired for good."""
        with self._write() as db:
            row = db.execute("SELECT instance_id FROM nodes WHERE id = ?", (node_id,)).fetchone()
            if row is None:
                return False
            db.execute(
                "INSERT OR IGNORE INTO retired (instance_id, retired_at) VALUES (?, ?)",
                (row["instance_id"], time.time()),
            )
            slots = [
                r[0] for r in db.execute("SELECT slot FROM peers WHERE node_id = ?", (node_id,))
            ]
            db.execute("DELETE FROM nodes WHERE id = ?", (node_id,))
            for slot in slots:
                self._free(slot)
            load = self._load.pop(node_id, 0)
            self._undo.append(lambda: self._load.__setitem__(node_id, load))
            self._touched.add(node_id)  # its held long-poll ends (404 next)
            return True

    # -- peers --------------------------------------------------------------------------

    def peers_since(
        self, node_id: str, since: int | None, limit: int | None = None
    ) -> dict[str, Any]:
        """The node's peers: all (``full``) or only those changed after ``since``.

        A full list is read page by page (each page alone under the lock); with
        ``limit`` only its first page is returned, and ``next_cursor`` names the next. A
        delta longer than ``limit`` is answered as a paged full list instead.
        """
        with self._read() as db:
            if db.execute("SELECT 1 FROM nodes WHERE id = ?", (node_id,)).fetchone() is None:
                raise NotFound(node_id)
            version = self._version(db)
            oldest = db.execute("SELECT MIN(version) FROM changes").fetchone()[0] or version + 1
            full = since is None or since > version or since < oldest - 1
            if not full:
                changed = db.execute(
                    "SELECT DISTINCT c.public_key, COALESCE(p.slot, k.slot) AS slot, "
                    "COALESCE(p.node_id, k.node_id) AS node_id FROM changes c "
                    "LEFT JOIN peers p ON p.public_key = c.public_key AND p.node_id = c.node_id "
                    "LEFT JOIN canaries k ON k.node_id = c.node_id AND k.public_key = c.public_key "
                    "WHERE c.node_id = ? AND c.version > ?",
                    (node_id, since),
                ).fetchall()
        if full or (limit is not None and len(changed) > limit):  # a big delta: pages
            return self.full_page(node_id, version, 0, limit)
        peers = [self._peer(r) for r in changed if r["node_id"] == node_id]
        removed = [r["public_key"] for r in changed if r["node_id"] != node_id]
        return {"version": version, "full": False, "peers": peers, "removed": removed}

    def full_page(
        self, node_id: str, version: int, after_slot: int, limit: int | None
    ) -> dict[str, Any]:
        """Peers of the full list at ``version`` after ``after_slot`` (keyset paging by
        slot). Pages are read at different times: whatever changed meanwhile is in the
        change log after ``version``, which the node asks for next. ``limit`` None: the
        rest of the list (for agents that do not page), still read page by page. The
        node's canary peer is listed like a client, by its slot in the canary block."""
        peers: list[dict[str, Any]] = []
        want = limit or PAGE
        while True:
            with self._read() as db:
                if db.execute("SELECT 1 FROM nodes WHERE id = ?", (node_id,)).fetchone() is None:
                    raise NotFound(node_id)
                rows = db.execute(
                    "SELECT public_key, slot FROM peers WHERE node_id = ?1 AND slot > ?2 "
                    "UNION ALL SELECT public_key, slot FROM canaries "
                    "WHERE node_id = ?1 AND slot > ?2 ORDER BY slot LIMIT ?3",
                    (node_id, after_slot, want),
                ).fetchall()
            peers.extend(self._peer(r) for r in rows)  # built outside the lock
            if rows:
                after_slot = rows[-1]["slot"]
            if limit is not None or len(rows) < want:
                break
        more = limit is not None and len(rows) == limit
        page = {"version": version, "full": True, "peers": peers, "removed": []}
        if limit is not None:
            page["next_cursor"] = f"{version}.{after_slot}" if more else None
        return page

    def _peer(self, row: sqlite3.Row) -> dict[str, Any]:
        return {
            "public_key": row["public_key"],
            "allowed_ips": list(self.pool.addresses(row["slot"])),
        }

    def assign(self, public_key: str, region: str | None, fresh_after: float) -> dict[str, Any]:
        """Place a client on the least-loaded healthy node (kept there while it is healthy).
        A node's or the canary's key is :class:`Refused` (:func:`_key_triggers`)."""
        with self._write() as db:
            current = db.execute(
                "SELECT p.slot, n.* FROM peers p JOIN nodes n ON n.id = p.node_id "
                "WHERE p.public_key = ?",
                (public_key,),
            ).fetchone()
            if current and current["state"] == "active":
                return self._assignment(current, current["slot"])
            candidates = db.execute(
                "SELECT * FROM nodes WHERE state = 'active' AND last_heartbeat_at >= ? "
                "AND (? IS NULL OR region = ?)",
                (fresh_after, region, region),
            ).fetchall()
            node = min(
                candidates,
                key=lambda n: (self._load.get(n["id"], 0), n["registered_at"]),
                default=None,
            )
            if node is None:
                raise NoCapacity(f"no healthy node{f' in {region}' if region else ''}")
            if current:  # moving off a draining node: keep the client's addresses
                slot = current["slot"]
                db.execute(
                    "UPDATE peers SET node_id = ? WHERE public_key = ?", (node["id"], public_key)
                )
                self._log(db, current["id"], public_key)
                self._count(current["id"], -1)
            else:
                slot = self._take()
                db.execute(
                    "INSERT INTO peers (public_key, node_id, slot, created_at) VALUES (?, ?, ?, ?)",
                    (public_key, node["id"], slot, time.time()),
                )
            self._count(node["id"], 1)
            self._log(db, node["id"], public_key)
            return self._assignment(node, slot)

    def _take(self) -> int:
        """The lowest free slot, O(log n); given back if the transaction rolls back."""
        slot = self._slots.take()
        if slot is None:
            raise NoCapacity("client address pool exhausted")
        self._undo.append(lambda: self._slots.free(slot))
        return slot

    def _free(self, slot: int) -> None:
        self._slots.free(slot)
        self._undo.append(lambda: self._slots.remove(slot))

    def _assignment(self, node: sqlite3.Row, slot: int) -> dict[str, Any]:
        ipv4, ipv6 = self.pool.addresses(slot)
        return {
            "node_id": node["id"],
            "region": node["region"],
            "endpoint": _endpoint(node),
            "node_public_key": node["public_key"],
            "addresses": {"ipv4": ipv4, "ipv6": ipv6},
        }

    def remove_peer(self, public_key: str) -> bool:
        with self._write() as db:
            row = db.execute(
                "SELECT node_id, slot FROM peers WHERE public_key = ?", (public_key,)
            ).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM peers WHERE public_key = ?", (public_key,))
            self._free(row["slot"])
            self._count(row["node_id"], -1)
            self._log(db, row["node_id"], public_key)
            return True

    # -- canary peers -------------------------------------------------------------------

    def set_canary(self, node_id: str, public_key: str) -> dict[str, Any]:
        """Make ``public_key`` the node's canary peer (replacing another key) and return
        how to reach the node through it. The same key has the same slot on every node
        (the lowest free one of the canary block when it is new). Idempotent: the same
        key again changes nothing. Refused when the node is not active or the key is a
        client's or a node's; :class:`NoCapacity` when the canary block is full."""
        with self._write() as db:
            node = db.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)).fetchone()
            if node is None:
                raise NotFound(node_id)
            if node["state"] != "active":
                raise Refused(f"node {node['state']}")
            current = db.execute(
                "SELECT public_key, slot FROM canaries WHERE node_id = ?", (node_id,)
            ).fetchone()
            if current and current["public_key"] == public_key:
                slot = current["slot"]
            else:
                slot = self._canary_slot(db, public_key)
                if current:
                    db.execute("DELETE FROM canaries WHERE node_id = ?", (node_id,))
                    self._log(db, node_id, current["public_key"])
                db.execute(
                    "INSERT INTO canaries (node_id, public_key, slot, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (node_id, public_key, slot, time.time()),
                )
                self._log(db, node_id, public_key)
            ipv4, ipv6 = self.pool.addresses(slot)
            return {
                "node_id": node_id,
                "endpoint": _endpoint(node),
                "public_key": node["public_key"],
                "address": {"ipv4": ipv4, "ipv6": ipv6},
                "peers_version": self._version(db),
            }

    def _canary_slot(self, db: sqlite3.Connection, public_key: str) -> int:
        """The key's slot on other nodes, or the lowest one no canary key and no client
        (from before the block was reserved) holds (a client's or a node's key is
        refused by the database: :func:`_key_triggers`)."""
        row = db.execute(
            "SELECT slot FROM canaries WHERE public_key = ? LIMIT 1", (public_key,)
        ).fetchone()
        if row:
            return row[0]
        block = self.pool.canary_slots
        taken = {r[0] for r in db.execute("SELECT DISTINCT slot FROM canaries")}
        taken |= {
            r[0] for r in db.execute("SELECT slot FROM peers WHERE slot >= ?", (block.start,))
        }
        slot = next((s for s in block if s not in taken), None)
        if slot is None:
            raise NoCapacity("canary address block exhausted")
        return slot

    def remove_canary(self, node_id: str) -> None:
        """Remove the node's canary peer, if it has one."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM nodes WHERE id = ?", (node_id,)).fetchone() is None:
                raise NotFound(node_id)
            row = db.execute(
                "SELECT public_key FROM canaries WHERE node_id = ?", (node_id,)
            ).fetchone()
            if row:
                db.execute("DELETE FROM canaries WHERE node_id = ?", (node_id,))
                self._log(db, node_id, row["public_key"])

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


def _endpoint(node: sqlite3.Row) -> str:
    """``ip:port`` of the node's WireGuard listener (IPv6 in brackets)."""
    host, port = node["public_ip"], node["listen_port"]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
