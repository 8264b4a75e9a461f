"""Which database the control plane uses, and an SQLAlchemy engine for it.

``sqlite:///PATH`` (the embedded default: one process, WAL, the file created 0600) or
``postgresql://…`` (psycopg 3; several replicas). Any other URL is bad input.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine


class BadDatabaseUrl(ValueError):
    pass


def parse_url(database: str | Path) -> URL:
    """A ``Path`` is a SQLite file; a string is a URL (``postgresql://`` uses psycopg 3)."""
    if isinstance(database, Path):
        return URL.create("sqlite", database=str(database))
    try:
        url = sa.make_url(database)
    except sa.exc.ArgumentError:
        raise BadDatabaseUrl("expected sqlite:///PATH or postgresql://USER@HOST/DB") from None
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername == "sqlite" and url.database and url.database != ":memory:":
        return url
    raise BadDatabaseUrl("expected sqlite:///PATH or postgresql://USER@HOST/DB")


def create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    # pre-ping: after a PostgreSQL restart, a stale pooled connection is replaced
    return sa.create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True)


def _sqlite_engine(url: URL) -> Engine:
    path = Path(url.database)
    if not path.exists():  # never open (and close) it beside SQLite: that drops its locks
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    path.chmod(0o600)  # WAL and shared-memory files inherit this mode
    engine = sa.create_engine(url, pool_size=8, max_overflow=32, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we say BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
            cursor.execute(f"PRAGMA {pragma}").fetchall()
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        # A writer takes the write lock at once: no deadlock upgrading a read lock.
        immediate = connection.get_execution_options().get("immediate")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
