"""The control plane's state: nodes, client peers, and a versioned change log so a node
fetches only what changed since the version it already has. SQLAlchemy 2 Core on SQLite
(the embedded default) or PostgreSQL (several replicas); the schema comes from the
migrations (:mod:`idra.controlplane.migrations`).

Every write is one transaction. Its changes get their versions at the end of it, from
the ``version`` counter row: the row's lock orders the writers, so versions are
commit-ordered and a reader that has seen version V has seen every change up to V (a
sequence would not be: a smaller number can commit later). Heartbeats touch only
their node's row. The log is pruned to the last ``keep_changes`` rows and to
``change_retention_s`` seconds: a ``since`` older than that gets the full list, so a
removed client's key is kept no longer than a node needs to learn of its removal.

Concurrency is the database's: key ownership (``key_owners``' primary key), client
slots (UNIQUE) and canary slots (UNIQUE) are constraints; a transaction that loses a
race (IntegrityError, serialization failure, deadlock) is retried from the start and
then sees the winner's row. The in-process free-slot index and peer counts are only
hints that make the usual case O(log n); they are rebuilt from the database after a
lost race.

The ops loop's lease and the canary's confirmations live here too (``ops_leases``,
``canary_listings``): a lease is decided by one conditional upsert on the database's
clock.

Node credentials are stored only as sha256 (they are 256-bit random, so a plain hash
suffices) and compared in constant time. A deleted node's instance id is kept as
retired: its identity document can never register again. A SQLite file is created 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from idra.controlplane import fanout, migrations
from idra.controlplane.database import create_engine, parse_url
from idra.controlplane.notify import ChangeNotifier, LocalNotifier
from idra.controlplane.schema import (
    canaries,
    canary_listings,
    changes,
    counters,
    key_owners,
    nodes,
    ops_leases,
    peers,
    retired,
)
from idra.controlplane.slots import SlotIndex

# One key, one owner: a WireGuard public key belongs to one node, one client peer or the
# canary (whose one key is on many nodes); ``key_owners`` holds it. The message is the
# 409's reason.
KEY_CLASH = "public key in use by"
KEY_OWNERS = {"node": "a node", "client": "a client", "canary": "a canary peer"}
RETRIES = 30  # attempts of a transaction that lost a race
RETRY_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock (PostgreSQL)
T = TypeVar("T")


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


PAGE = 2000  # peers per page of a full list; each page is its own short read
MAX_PAGE = 10_000


@dataclass
class _Tx:
    """One write transaction: its connection, the changes to log at its end, the nodes
    to notify after its commit, and the in-process hints to undo if it rolls back."""

    conn: sa.Connection
    changes: list[tuple[str, str]] = field(default_factory=list)  # (node id, key)
    touched: set[str] = field(default_factory=set)
    version: int = 0  # the version its last change got (0: none)
    undo: list[Callable[[], None]] = field(default_factory=list)

    def log(self, node_id: str, public_key: str) -> None:
        self.changes.append((node_id, public_key))
        self.touched.add(node_id)


def _retryable(exc: BaseException) -> bool:
    """A transaction that lost a race with another writer (it runs again)."""
    if isinstance(exc, sa_exc.IntegrityError):
        return True
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(exc, sa_exc.DBAPIError) and code in RETRY_SQLSTATES


class Store:
    """Thread-safe access to the database (``database``: a SQLite ``Path`` or a URL).

    Besides the database: a free-slot index and each node's peer count (hints, see the
    module docstring); and a :class:`ChangeNotifier` told, after each commit, which
    nodes' peers changed (long-polls, ARCHITECTURE §3b). The schema must be this
    release's: :func:`migrations.prepare` brings a SQLite file or an empty PostgreSQL
    database there and raises :class:`migrations.SchemaError` otherwise.
    """

    def __init__(
        self,
        database: str | Path,
        pool: Pool,
        keep_changes: int = 100_000,
        change_retention_s: float = 3600,
        notifier: ChangeNotifier | None = None,
    ) -> None:
        self.pool, self.keep_changes = pool, keep_changes
        self.change_retention_s = change_retention_s
        self.url = parse_url(database)
        self.engine = create_engine(self.url)
        try:
            migrations.prepare(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self.sqlite = self.engine.dialect.name == "sqlite"
        # SQLite has one writer anyway: waiting here is cheaper than its busy loop. On
        # PostgreSQL writers run concurrently; the database orders them.
        self._writer = threading.Lock() if self.sqlite else contextlib.nullcontext()
        self._hints = threading.Lock()  # guards the slot index and the peer counts
        self._pruned_at = 0.0
        self.notifier: ChangeNotifier = notifier or LocalNotifier()
        self._resync()

    def _resync(self) -> None:
        """Rebuild the hints from the database."""
        with self.engine.connect() as conn:
            used = conn.execute(sa.select(peers.c.slot).order_by(peers.c.slot)).scalars().all()
            load = conn.execute(
                sa.select(peers.c.node_id, sa.func.count()).group_by(peers.c.node_id)
            ).all()
        with self._hints:
            self._slots = SlotIndex(used, 2, self.pool.user_slots)
            self._load: dict[str, int] = dict(load)

    def _write(self, work: Callable[[_Tx], T]) -> T:
        """Run ``work`` in one transaction (again, from the start, when it lost a race);
        log its changes at its end; notify after the commit."""
        for attempt in range(RETRIES):
            tx = None
            try:
                with self._writer, self.engine.connect() as conn:
                    conn = conn.execution_options(immediate=True)
                    with conn.begin():
                        tx = _Tx(conn)
                        result = work(tx)
                        self._commit_changes(tx)
                        if tx.touched and not self.sqlite:  # to every replica, on commit
                            fanout.notify(conn.exec_driver_sql, tx.version, tx.touched)
            except BaseException as exc:
                if tx is not None:
                    with self._hints:
                        for undo in reversed(tx.undo):
                            undo()
                if not _retryable(exc) or attempt == RETRIES - 1:
                    raise
                self._resync()
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))  # noqa: S311
                continue
            if tx.touched:
                self.notifier.publish(tx.touched)
            return result
        raise AssertionError("unreachable")

    def _commit_changes(self, tx: _Tx) -> None:
        """Number the transaction's changes from the counter row (its lock, held to the
        commit, orders writers) and log them; prune the log."""
        if not tx.changes:
            return
        top = tx.conn.execute(
            sa.update(counters)
            .where(counters.c.name == "version")
            .values(value=counters.c.value + len(tx.changes))
            .returning(counters.c.value)
        ).scalar_one()
        now, tx.version = time.time(), top
        first = top - len(tx.changes) + 1
        tx.conn.execute(
            sa.insert(changes),
            [
                {"version": first + i, "node_id": node, "public_key": key, "created_at": now}
                for i, (node, key) in enumerate(tx.changes)
            ],
        )
        tx.conn.execute(sa.delete(changes).where(changes.c.version <= top - self.keep_changes))
        self._prune(tx.conn)

    def _prune(self, conn: sa.Connection) -> None:
        """Forget changes older than the retention (at most every few seconds)."""
        now = time.time()
        if now - self._pruned_at >= min(10.0, self.change_retention_s):
            self._pruned_at = now
            conn.execute(
                sa.delete(changes).where(changes.c.created_at < now - self.change_retention_s)
            )

    def _count(self, tx: _Tx, node_id: str, delta: int) -> None:
        """Change a node's peer count hint (undone if the transaction rolls back)."""
        with self._hints:
            self._load[node_id] = self._load.get(node_id, 0) + delta

        def undo() -> None:
            self._load[node_id] = self._load.get(node_id, 0) - delta

        tx.undo.append(undo)

    def _claim(self, tx: _Tx, public_key: str, kind: str, owner: str | None = None,
               slot: int | None = None) -> None:  # fmt: skip
        """Record who owns ``public_key`` (:class:`Refused` when another owner does; the
        primary key refuses it in the database whoever writes, and a concurrent claim
        makes this transaction retry and then see the winner)."""
        row = tx.conn.execute(
            sa.select(key_owners).where(key_owners.c.public_key == public_key)
        ).first()
        if row is None:
            tx.conn.execute(
                sa.insert(key_owners).values(
                    public_key=public_key, kind=kind, owner=owner, slot=slot
                )
            )
            return
        if row.kind == kind and kind != "client" and (kind == "canary" or row.owner == owner):
            return  # already this owner's
        theirs = "another node" if row.kind == kind == "node" else KEY_OWNERS[row.kind]
        raise Refused(f"{KEY_CLASH} {theirs}")

    @staticmethod
    def _release(tx: _Tx, public_key: str) -> None:
        tx.conn.execute(sa.delete(key_owners).where(key_owners.c.public_key == public_key))

    # -- versions -------------------------------------------------------------------

    @staticmethod
    def _version(conn: sa.Connection) -> int:
        return conn.execute(
            sa.select(counters.c.value).where(counters.c.name == "version")
        ).scalar_one()

    def version(self) -> int:
        with self.engine.connect() as conn:
            return self._version(conn)

    # -- nodes ------------------------------------------------------------------------

    def needs_confirmation(self, instance_id: str, public_ip: str) -> bool:
        """Whether AWS must confirm this registration: a first use of the instance, or its
        node now reports another ``public_ip``. A retired instance is refused anyway."""
        with self.engine.connect() as conn:
            if conn.execute(
                sa.select(retired.c.instance_id).where(retired.c.instance_id == instance_id)
            ).first():
                return False
            ip = conn.execute(
                sa.select(nodes.c.public_ip).where(nodes.c.instance_id == instance_id)
            ).scalar()
        return ip is None or ip != public_ip

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
        fields = {k: body[k] for k in ("public_ip", "public_key", "listen_port", "agent_version")}

        def work(tx: _Tx) -> tuple[str, str] | None:
            db = tx.conn
            if db.execute(
                sa.select(retired.c.instance_id).where(retired.c.instance_id == instance_id)
            ).first():
                raise Refused("instance retired")
            row = db.execute(
                sa.select(nodes).where(nodes.c.instance_id == instance_id).with_for_update()
            ).first()
            if row is None:
                node_id, given = "node-" + secrets.token_hex(6), credential or new_credential()
                db.execute(
                    sa.insert(nodes).values(
                        id=node_id, instance_id=instance_id, region=region,
                        account_id=account_id, credential_sha256=credential_hash(given),
                        registered_at=time.time(), **fields,
                    )
                )  # fmt: skip
                self._claim(tx, body["public_key"], "node", node_id)
                return node_id, given
            stored = row.credential_sha256
            lost = stored is not None and (
                credential is None or not hmac.compare_digest(credential_hash(credential), stored)
            )
            if not lost:  # its own agent (or a record from before attestation: bind it now)
                given = credential or new_credential()
                if row.public_key != body["public_key"]:
                    self._claim(tx, body["public_key"], "node", row.id)
                    self._release(tx, row.public_key)
                db.execute(
                    sa.update(nodes)
                    .where(nodes.c.id == row.id)
                    .values(credential_sha256=credential_hash(given), **fields)
                )
                return row.id, given
            now = time.time()
            db.execute(
                sa.update(nodes)
                .where(nodes.c.id == row.id)
                .values(
                    identity_refusals=nodes.c.identity_refusals + 1,
                    identity_refused_at=now,
                    state="draining",
                    drain_reason=sa.case(
                        (nodes.c.drain_reason == "compromised", nodes.c.drain_reason),
                        else_="identity_lost",
                    ),
                    drain_started_at=sa.func.coalesce(nodes.c.drain_started_at, now),
                )
            )
            return None  # committed; refused below

        result = self._write(work)
        if result is None:
            raise Refused("instance already bound to a node; its node credential is required")
        return result

    def credential_ok(self, node_id: str, credential: str) -> bool:
        """``credential`` is this node's (constant-time compare; unknown node: False)."""
        given = credential_hash(credential)
        with self.engine.connect() as conn:
            stored = conn.execute(
                sa.select(nodes.c.credential_sha256).where(nodes.c.id == node_id)
            ).scalar()
        return hmac.compare_digest(given, stored or "")

    def node(self, node_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(nodes).where(nodes.c.id == node_id)).mappings().first()
        if row is None:
            raise NotFound(node_id)
        return dict(row)

    def nodes(self, state: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(nodes).order_by(nodes.c.registered_at)
        if state:
            query = query.where(nodes.c.state == state)
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def heartbeat(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Record a heartbeat (the node's row only: no version, no notification); return
        the node as stored (with its nftables baseline). ``root_readonly_baseline`` is
        returned as it was before: 1 once the node has reported a read-only root."""

        def work(tx: _Tx) -> dict[str, Any]:
            row = tx.conn.execute(
                sa.select(nodes).where(nodes.c.id == node_id).with_for_update()
            ).mappings().first()  # fmt: skip
            if row is None:
                raise NotFound(node_id)
            baseline = row["nftables_baseline"] or body["integrity"]["nftables_sha256"]
            locked = row["root_readonly_baseline"] or body["integrity"].get("root_readonly") is True
            tx.conn.execute(
                sa.update(nodes)
                .where(nodes.c.id == node_id)
                .values(
                    last_heartbeat_at=time.time(),
                    reported_state=body["state"],
                    active_peers=body["stats"]["active_peers"],
                    stats=json.dumps(body["stats"]),
                    nftables_baseline=baseline,
                    root_readonly_baseline=int(locked),
                )
            )
            return dict(row) | {"nftables_baseline": baseline}

        node = self._write(work)
        if time.time() - self._pruned_at >= min(10.0, self.change_retention_s):
            self._write(lambda tx: self._prune(tx.conn))  # retention holds without writes
        return node

    def drain(self, node_id: str, reason: str) -> None:
        """Take a node out of the pool (idempotent; ``compromised`` overrides a reason)."""

        def work(tx: _Tx) -> None:
            node = tx.conn.execute(
                sa.select(nodes.c.state).where(nodes.c.id == node_id).with_for_update()
            ).first()
            if node is None:
                raise NotFound(node_id)
            if node.state == "draining" and reason != "compromised":
                return
            tx.conn.execute(
                sa.update(nodes)
                .where(nodes.c.id == node_id)
                .values(
                    state="draining",
                    drain_reason=reason,
                    drain_started_at=sa.func.coalesce(nodes.c.drain_started_at, time.time()),
                )
            )

        self._write(work)

    def delete_node(self, node_id: str) -> bool:
        """Forget a node and its peers' assignments (clients ask again); its instance is
        retired for good."""

        def work(tx: _Tx) -> bool:
            db = tx.conn
            row = db.execute(
                sa.select(nodes.c.instance_id, nodes.c.public_key)
                .where(nodes.c.id == node_id)
                .with_for_update()
            ).first()
            if row is None:
                return False
            if not db.execute(
                sa.select(retired.c.instance_id).where(retired.c.instance_id == row.instance_id)
            ).first():
                db.execute(sa.insert(retired).values(instance_id=row.instance_id,
                                                     retired_at=time.time()))  # fmt: skip
            held = db.execute(
                sa.select(peers.c.public_key, peers.c.slot).where(peers.c.node_id == node_id)
            ).all()
            canary = db.execute(
                sa.select(canaries.c.public_key).where(canaries.c.node_id == node_id)
            ).scalar()
            db.execute(sa.delete(nodes).where(nodes.c.id == node_id))  # cascades
            self._release(tx, row.public_key)
            db.execute(
                sa.delete(key_owners).where(key_owners.c.public_key.in_([k for k, _ in held]))
            )
            if canary is not None:
                self._release_canary(tx, canary)
            for _, slot in held:
                self._free(tx, slot)
            with self._hints:
                load = self._load.pop(node_id, 0)
            tx.undo.append(lambda: self._load.__setitem__(node_id, load))
            tx.touched.add(node_id)  # its held long-poll ends (404 next)
            return True

        return self._write(work)

    # -- peers --------------------------------------------------------------------------

    def peers_since(
        self, node_id: str, since: int | None, limit: int | None = None
    ) -> dict[str, Any]:
        """The node's peers: all (``full``) or only those changed after ``since``.

        The version is read first: every change up to it is committed (versions are
        commit-ordered), so the delta holds them all. A full list is read page by page;
        with ``limit`` only its first page is returned, and ``next_cursor`` names the
        next. A delta longer than ``limit`` is answered as a paged full list instead.
        """
        with self.engine.connect() as db:
            if db.execute(sa.select(nodes.c.id).where(nodes.c.id == node_id)).first() is None:
                raise NotFound(node_id)
            version = self._version(db)
            oldest = db.execute(sa.select(sa.func.min(changes.c.version))).scalar()
            oldest = version + 1 if oldest is None else oldest
            full = since is None or since > version or since < oldest - 1
            if not full:
                changed = db.execute(
                    sa.text(
                        "SELECT DISTINCT c.public_key, COALESCE(p.slot, k.slot) AS slot, "
                        "COALESCE(p.node_id, k.node_id) AS node_id FROM changes c "
                        "LEFT JOIN peers p ON p.public_key = c.public_key "
                        "AND p.node_id = c.node_id "
                        "LEFT JOIN canaries k ON k.node_id = c.node_id "
                        "AND k.public_key = c.public_key "
                        "WHERE c.node_id = :node AND c.version > :since"
                    ),
                    {"node": node_id, "since": since},
                ).all()
        if full or (limit is not None and len(changed) > limit):  # a big delta: pages
            return self.full_page(node_id, version, 0, limit)
        peers_ = [self._peer(r) for r in changed if r.node_id == node_id]
        removed = [r.public_key for r in changed if r.node_id != node_id]
        return {"version": version, "full": False, "peers": peers_, "removed": removed}

    def full_page(
        self, node_id: str, version: int, after_slot: int, limit: int | None
    ) -> dict[str, Any]:
        """Peers of the full list at ``version`` after ``after_slot`` (keyset paging by
        slot). Pages are read at different times: whatever changed meanwhile is in the
        change log after ``version``, which the node asks for next. ``limit`` None: the
        rest of the list (for agents that do not page), still read page by page. The
        node's canary peer is listed like a client, by its slot in the canary block."""
        listed: list[dict[str, Any]] = []
        want = limit or PAGE
        query = sa.text(
            "SELECT public_key, slot FROM peers WHERE node_id = :node AND slot > :after "
            "UNION ALL SELECT public_key, slot FROM canaries "
            "WHERE node_id = :node AND slot > :after ORDER BY slot LIMIT :n"
        )
        while True:
            with self.engine.connect() as db:
                if db.execute(sa.select(nodes.c.id).where(nodes.c.id == node_id)).first() is None:
                    raise NotFound(node_id)
                rows = db.execute(query, {"node": node_id, "after": after_slot, "n": want}).all()
            listed.extend(self._peer(r) for r in rows)
            if rows:
                after_slot = rows[-1].slot
            if limit is not None or len(rows) < want:
                break
        more = limit is not None and len(rows) == limit
        page = {"version": version, "full": True, "peers": listed, "removed": []}
        if limit is not None:
            page["next_cursor"] = f"{version}.{after_slot}" if more else None
        return page

    def _peer(self, row: Any) -> dict[str, Any]:
        return {"public_key": row.public_key, "allowed_ips": list(self.pool.addresses(row.slot))}

    def assign(self, public_key: str, region: str | None, fresh_after: float) -> dict[str, Any]:
        """Place a client on the least-loaded healthy node (kept there while it is healthy).
        A node's or the canary's key is :class:`Refused` (``key_owners``)."""

        def work(tx: _Tx) -> dict[str, Any]:
            db = tx.conn
            self._lock_slots(tx)
            current = db.execute(
                sa.select(peers.c.slot, nodes)
                .join(nodes, nodes.c.id == peers.c.node_id)
                .where(peers.c.public_key == public_key)
                .with_for_update(of=peers)
            ).first()
            if current and current.state == "active":
                return self._assignment(current, current.slot)
            query = sa.select(nodes).where(
                nodes.c.state == "active", nodes.c.last_heartbeat_at >= fresh_after
            )
            if region is not None:
                query = query.where(nodes.c.region == region)
            candidates = db.execute(query).all()
            with self._hints:
                node = min(
                    candidates,
                    key=lambda n: (self._load.get(n.id, 0), n.registered_at),
                    default=None,
                )
            if node is None:
                raise NoCapacity(f"no healthy node{f' in {region}' if region else ''}")
            if current:  # moving off a draining node: keep the client's addresses
                slot = current.slot
                db.execute(
                    sa.update(peers).where(peers.c.public_key == public_key).values(node_id=node.id)
                )
                tx.log(current.id, public_key)
                self._count(tx, current.id, -1)
            else:
                slot = self._take(tx)
                self._claim(tx, public_key, "client", slot=slot)
                db.execute(
                    sa.insert(peers).values(
                        public_key=public_key, node_id=node.id, slot=slot, created_at=time.time()
                    )
                )
            self._count(tx, node.id, 1)
            tx.log(node.id, public_key)
            return self._assignment(node, slot)

        return self._write(work)

    @staticmethod
    def _lock_slots(tx: _Tx) -> None:
        """Take the version row's lock first (PostgreSQL; SQLite has one writer): slot
        choices of all replicas are made one at a time, each seeing the others' commits.
        (Writers queue on this row at their commit anyway.)"""
        tx.conn.execute(
            sa.select(counters.c.value).where(counters.c.name == "version").with_for_update()
        )

    def _take(self, tx: _Tx) -> int:
        """The lowest free slot by the index, O(log n), checked against the database
        (another replica may have taken it: then the next); given back if the transaction
        rolls back. The UNIQUE slot columns are what make it the client's alone."""
        while True:
            with self._hints:
                slot = self._slots.take()
            if slot is None:
                raise NoCapacity("client address pool exhausted")
            taken = tx.conn.execute(
                sa.select(key_owners.c.slot).where(key_owners.c.slot == slot)
            ).first()
            if taken is None:
                break

        def undo() -> None:
            self._slots.free(slot)

        tx.undo.append(undo)
        return slot

    def _free(self, tx: _Tx, slot: int) -> None:
        with self._hints:
            self._slots.free(slot)

        def undo() -> None:
            self._slots.remove(slot)

        tx.undo.append(undo)

    def _assignment(self, node: Any, slot: int) -> dict[str, Any]:
        ipv4, ipv6 = self.pool.addresses(slot)
        return {
            "node_id": node.id,
            "region": node.region,
            "endpoint": _endpoint(node),
            "node_public_key": node.public_key,
            "addresses": {"ipv4": ipv4, "ipv6": ipv6},
        }

    def remove_peer(self, public_key: str) -> bool:
        def work(tx: _Tx) -> bool:
            row = tx.conn.execute(
                sa.select(peers.c.node_id, peers.c.slot)
                .where(peers.c.public_key == public_key)
                .with_for_update()
            ).first()
            if row is None:
                return False
            tx.conn.execute(sa.delete(peers).where(peers.c.public_key == public_key))
            self._release(tx, public_key)
            self._free(tx, row.slot)
            self._count(tx, row.node_id, -1)
            tx.log(row.node_id, public_key)
            return True

        return self._write(work)

    # -- canary peers -------------------------------------------------------------------

    def set_canary(self, node_id: str, public_key: str) -> dict[str, Any]:
        """Make ``public_key`` the node's canary peer (replacing another key) and return
        how to reach the node through it. The same key has the same slot on every node
        (the lowest free one of the canary block when it is new). Idempotent: the same
        key again changes nothing. Refused when the node is not active or the key is a
        client's or a node's; :class:`NoCapacity` when the canary block is full."""

        def work(tx: _Tx) -> dict[str, Any]:
            db = tx.conn
            self._lock_slots(tx)
            node = db.execute(
                sa.select(nodes).where(nodes.c.id == node_id).with_for_update()
            ).first()
            if node is None:
                raise NotFound(node_id)
            if node.state != "active":
                raise Refused(f"node {node.state}")
            current = db.execute(
                sa.select(canaries.c.public_key, canaries.c.slot).where(
                    canaries.c.node_id == node_id
                )
            ).first()
            if current and current.public_key == public_key:
                slot = current.slot
            else:
                slot = self._canary_slot(tx, public_key)
                if current:
                    db.execute(sa.delete(canaries).where(canaries.c.node_id == node_id))
                    self._release_canary(tx, current.public_key)
                    tx.log(node_id, current.public_key)
                db.execute(
                    sa.insert(canaries).values(
                        node_id=node_id, public_key=public_key, slot=slot, created_at=time.time()
                    )
                )
                tx.log(node_id, public_key)
            ipv4, ipv6 = self.pool.addresses(slot)
            return {
                "node_id": node_id,
                "endpoint": _endpoint(node),
                "public_key": node.public_key,
                "address": {"ipv4": ipv4, "ipv6": ipv6},
            }

        reply = self._write(work)
        return reply | {"peers_version": self.version()}

    def _canary_slot(self, tx: _Tx, public_key: str) -> int:
        """The key's slot (the same on every node), or for a new key the lowest slot of
        the block that no key holds (a client from before the block was reserved may);
        the key is then claimed with it (``key_owners.slot`` is UNIQUE)."""
        owned = tx.conn.execute(
            sa.select(key_owners.c.kind, key_owners.c.slot).where(
                key_owners.c.public_key == public_key
            )
        ).first()
        if owned is not None and owned.kind == "canary":
            return owned.slot
        block = self.pool.canary_slots
        taken = set(
            tx.conn.execute(
                sa.select(key_owners.c.slot).where(key_owners.c.slot >= block.start)
            ).scalars()
        )
        slot = next((s for s in block if s not in taken), None)
        if owned is None and slot is None:
            raise NoCapacity("canary address block exhausted")
        self._claim(tx, public_key, "canary", slot=slot)  # refuses another owner's key
        return slot

    @staticmethod
    def _release_canary(tx: _Tx, public_key: str) -> None:
        """Forget a canary key's ownership once no node has it any more."""
        tx.conn.execute(
            sa.delete(key_owners).where(
                key_owners.c.public_key == public_key,
                key_owners.c.kind == "canary",
                ~sa.exists().where(canaries.c.public_key == public_key),
            )
        )

    def remove_canary(self, node_id: str) -> None:
        """Remove the node's canary peer, if it has one."""

        def work(tx: _Tx) -> None:
            db = tx.conn
            if db.execute(
                sa.select(nodes.c.id).where(nodes.c.id == node_id).with_for_update()
            ).first() is None:  # fmt: skip
                raise NotFound(node_id)
            key = db.execute(
                sa.select(canaries.c.public_key).where(canaries.c.node_id == node_id)
            ).scalar()
            if key is not None:
                db.execute(sa.delete(canaries).where(canaries.c.node_id == node_id))
                self._release_canary(tx, key)
                tx.log(node_id, key)

        self._write(work)

    # -- the ops loop's state ------------------------------------------------------------

    def _clock(self) -> sa.ColumnElement:
        """The database's clock in seconds since the epoch: one clock for all replicas
        and ops loops, whatever their own clocks say."""
        if self.sqlite:
            return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)")
        return sa.literal_column("CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS FLOAT8)")

    def take_lease(self, name: str, holder: str, seconds: float) -> tuple[bool, str, float]:
        """Take or renew the lease ``name`` for ``seconds``: one conditional upsert that
        writes only when nobody holds it, ``holder`` does, or its holder's lease expired
        (by the database's clock; on PostgreSQL the conflicting row is locked, so two
        replicas decide one after the other). ``(taken, holder, expires_at)``."""
        insert = (sqlite.insert if self.sqlite else postgresql.insert)(ops_leases)
        now = self._clock()
        upsert = insert.values(name=name, holder=holder, expires_at=now + seconds)
        upsert = upsert.on_conflict_do_update(
            index_elements=[ops_leases.c.name],
            set_={"holder": upsert.excluded.holder, "expires_at": upsert.excluded.expires_at},
            where=(ops_leases.c.holder == holder) | (ops_leases.c.expires_at < now),
        ).returning(ops_leases.c.holder, ops_leases.c.expires_at)

        def work(tx: _Tx) -> tuple[bool, str, float]:
            taken = tx.conn.execute(upsert).first()
            if taken is not None:
                return True, taken.holder, taken.expires_at
            row = tx.conn.execute(
                sa.select(ops_leases.c.holder, ops_leases.c.expires_at).where(
                    ops_leases.c.name == name
                )
            ).one()
            return False, row.holder, row.expires_at

        return self._write(work)

    def release_lease(self, name: str, holder: str) -> tuple[str, float] | None:
        """Give the lease up if ``holder`` holds it. ``(holder, expires_at)`` of another
        holder's lease that still runs, else None (released, or nobody's)."""

        def work(tx: _Tx) -> tuple[str, float] | None:
            tx.conn.execute(
                sa.delete(ops_leases).where(ops_leases.c.name == name,
                                            ops_leases.c.holder == holder)
            )  # fmt: skip
            row = tx.conn.execute(
                sa.select(ops_leases.c.holder, ops_leases.c.expires_at).where(
                    ops_leases.c.name == name, ops_leases.c.expires_at >= self._clock()
                )
            ).first()
            return None if row is None else (row.holder, row.expires_at)

        return self._write(work)

    def listed_runs(self) -> dict[str, int]:
        """The canary's confirmations: node id → runs in a row that listed it."""
        with self.engine.connect() as conn:
            return self._listed_runs(conn)

    @staticmethod
    def _listed_runs(conn: sa.Connection) -> dict[str, int]:
        rows = conn.execute(
            sa.select(canary_listings.c.node_id, canary_listings.c.listed_runs).order_by(
                canary_listings.c.node_id
            )
        ).all()
        return {row.node_id: row.listed_runs for row in rows}

    def set_listed_runs(self, listed: dict[str, int]) -> dict[str, int]:
        """Replace the canary's confirmations; nodes the store does not know (any more)
        are dropped (a deleted node's row goes with it: ON DELETE CASCADE). Returns
        what is stored."""

        def work(tx: _Tx) -> dict[str, int]:
            tx.conn.execute(sa.delete(canary_listings))
            known = set(
                tx.conn.execute(sa.select(nodes.c.id).where(nodes.c.id.in_(list(listed))))
                .scalars()
            ) if listed else set()  # fmt: skip
            rows = [{"node_id": n, "listed_runs": c} for n, c in listed.items() if n in known]
            if rows:
                tx.conn.execute(sa.insert(canary_listings), rows)
            return self._listed_runs(tx.conn)

        return self._write(work)

    def close(self) -> None:
        self.engine.dispose()
        self._closed = True

    # -- observability -------------------------------------------------------------------

    def ping(self) -> None:
        """Read the database once (raises ``sqlalchemy.exc.SQLAlchemyError`` when it does
        not answer)."""
        if getattr(self, "_closed", False):
            raise sa_exc.InvalidRequestError("store closed")
        with self.engine.connect() as conn:
            conn.execute(sa.select(sa.func.count()).select_from(nodes)).scalar()

    def counts(self) -> dict[str, Any]:
        """Aggregates only: nodes by state, peers, reported active peers, change-log rows."""
        with self.engine.connect() as db:
            states = db.execute(
                sa.select(nodes.c.state, sa.func.count(), sa.func.sum(nodes.c.active_peers))
                .group_by(nodes.c.state)
            ).all()  # fmt: skip
            by_state = {row[0]: (row[1], row[2] or 0) for row in states}
            return {
                "nodes": {state: n for state, (n, _) in by_state.items()},
                "active_peers": sum(active for _, active in by_state.values()),
                "peers": db.execute(sa.select(sa.func.count()).select_from(peers)).scalar(),
                "changes": db.execute(sa.select(sa.func.count()).select_from(changes)).scalar(),
                "version": self._version(db),
            }


def _endpoint(node: Any) -> str:
    """``ip:port`` of the node's WireGuard listener (IPv6 in brackets)."""
    host, port = node.public_ip, node.listen_port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
