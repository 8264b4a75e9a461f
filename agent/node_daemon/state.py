"""The agent's peer state in compact form: the live peers (key → allowed IPs) and the
address → owner index, in an in-memory SQLite database (stdlib, C B-trees).

Python dicts of strings cost about 350 bytes a peer (two key and address objects, dict
entries); the same rows here take about half, outside the Python heap, and the mark of
a full sync (which live peers the list named) is a column, not a set of 100k keys.
Keys are held as their 32 raw bytes and handed out in base64, as the API spells them;
addresses in the index packed (4 or 16 bytes): about 220 bytes a peer in all.
"""

from __future__ import annotations

import base64
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator

SCHEMA = """
CREATE TABLE peers (id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE, ips TEXT NOT NULL,
                    seen INTEGER NOT NULL DEFAULT 0);
CREATE TABLE owners (ip BLOB PRIMARY KEY, peer INTEGER NOT NULL) WITHOUT ROWID;
"""


def _raw(key: object) -> bytes | None:
    """A key's 32 raw bytes; None (matches no row) for anything but a canonical key, as
    a hostile reply's ``removed`` list or page may hold."""
    try:
        raw = base64.b64decode(key, validate=True)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return raw if len(raw) == 32 and _b64(raw) == key else None


def _addr(ip: str) -> bytes:
    """A host's address packed: 4 bytes (IPv4) or 16 (IPv6); the prefix length is /32 or /128."""
    host = ip.partition("/")[0]
    return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Owners:
    """Allowed IP → the live peer holding it (read-only view of the index)."""

    def __init__(self, table: PeerTable) -> None:
        self._table = table

    def get(self, ip: str, default: str | None = None) -> str | None:
        row = self._table._one(
            "SELECT key FROM owners JOIN peers ON peers.id = owners.peer WHERE ip = ?", (_addr(ip),)
        )
        return _b64(row[0]) if row else default

    def __len__(self) -> int:
        return self._table._one("SELECT count(*) FROM owners")[0]


class PeerTable:
    """Live peers, key (base64) → allowed IPs ("ip/32,ip/128", sorted), mapping-like
    for reading; written through :meth:`put` and :meth:`pop`, which keep the owner
    index in step. Each call is atomic (the long-poll thread applies, the loop reads);
    a sync's several calls are kept together by the agent's ``peers_lock``."""

    def __init__(self, peers: Iterable[tuple[str, str]] = ()) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()
        self.owners = Owners(self)
        for key, ips in peers:
            self.put(key, ips)

    def _one(self, query: str, args: tuple = ()) -> tuple | None:
        with self._lock:
            return self._db.execute(query, args).fetchone()

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self._one("SELECT ips FROM peers WHERE key = ?", (_raw(key),))
        return row[0] if row else default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        return self._one("SELECT count(*) FROM peers")[0]

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.items())

    def items(self) -> Iterator[tuple[str, str]]:
        """Streamed in batches (a snapshot is never built in Python)."""
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, key, ips FROM peers WHERE id > ? ORDER BY id LIMIT 1000", (last,)
                ).fetchall()
            if not rows:
                return
            for _, key, ips in rows:
                yield _b64(key), ips
            last = rows[-1][0]

    def put(self, key: str, ips: str) -> None:
        """Add or update a peer; its addresses now point to it (an address it no longer
        holds is released if it was its own)."""
        with self._lock:
            self._put(_raw(key), ips)

    def _put(self, raw: bytes, ips: str) -> None:
        db = self._db
        row = db.execute("SELECT id FROM peers WHERE key = ?", (raw,)).fetchone()
        if row is None:
            peer = db.execute("INSERT INTO peers (key, ips) VALUES (?, ?)", (raw, ips)).lastrowid
        else:
            peer = row[0]
            db.execute("DELETE FROM owners WHERE peer = ?", (peer,))
            db.execute("UPDATE peers SET ips = ? WHERE id = ?", (ips, peer))
        db.executemany(
            "INSERT OR REPLACE INTO owners (ip, peer) VALUES (?, ?)",
            [(_addr(ip), peer) for ip in ips.split(",") if ip],
        )

    def pop(self, key: str, default: str = "") -> str:
        """Remove a peer and the addresses it owns; its allowed IPs (or ``default``)."""
        with self._lock:
            db = self._db
            row = db.execute("SELECT id, ips FROM peers WHERE key = ?", (_raw(key),)).fetchone()
            if row is None:
                return default
            db.execute("DELETE FROM owners WHERE peer = ?", (row[0],))
            db.execute("DELETE FROM peers WHERE id = ?", (row[0],))
            return row[1]

    # -- the mark of a full sync ---------------------------------------------------

    def unmark(self) -> None:
        with self._lock:
            self._db.execute("UPDATE peers SET seen = 0")

    def mark(self, keys: Iterable[str]) -> None:
        """These keys were in the full list (unknown keys are ignored)."""
        rows = [(_raw(key),) for key in keys]
        with self._lock:
            self._db.executemany("UPDATE peers SET seen = 1 WHERE key = ?", rows)

    def marked(self, key: str) -> bool:
        row = self._one("SELECT seen FROM peers WHERE key = ?", (_raw(key),))
        return bool(row and row[0])

    def unmarked(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT key FROM peers WHERE seen = 0").fetchall()
        return [_b64(raw) for (raw,) in rows]
