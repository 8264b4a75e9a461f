"""Schema migrations (Alembic; the scripts are in ``versions/``).

``upgrade`` runs them under a lock, so two replicas starting together migrate once:
``pg_advisory_lock`` on PostgreSQL; on SQLite the whole check-and-migrate is one
``BEGIN IMMEDIATE`` transaction (SQLite's own write lock: a second opener of the file
would drop SQLite's POSIX locks when it closes it). The second waits, then finds the
schema at head and does nothing.

``prepare`` is what ``serve`` (and :class:`~idra.controlplane.store.Store`) calls: a
SQLite file is always brought to head (one process owns it; an earlier release's file
upgrades here); a PostgreSQL database is migrated only when it is empty, and otherwise
must already be at this release's head (else :class:`SchemaError`: run ``idra
controlplane migrate``).

The rollout rule, for every new migration: old and new releases run side by side
against the migrated schema, so a migration only adds (tables, nullable or defaulted
columns, indexes, constraints the old release already satisfies). A rename, a drop or
a type change is split: the release that stops using a column ships first, the
migration that drops it ships in a later release.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

log = logging.getLogger("idra.controlplane")
# Alembic's own lines ("Context impl …") say nothing an operator needs; ours does.
logging.getLogger("alembic").setLevel(logging.WARNING)

# The advisory lock's key: any 64-bit number no other tool on the database uses.
LOCK_KEY = zlib.crc32(b"idra.controlplane.migrations")


class SchemaError(RuntimeError):
    """The database's schema is not the one this release knows."""


def _config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _locked(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection holding the migration lock."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
            connection.commit()  # a session lock: it outlives the transaction
            try:
                yield connection
            finally:
                connection.rollback()
                connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                connection.commit()
        else:
            connection = connection.execution_options(immediate=True)
            with connection.begin():  # held to the end: Alembic runs inside it
                yield connection


def _upgrade(connection: sa.Connection) -> tuple[str | None, str]:
    before = current(connection)
    if connection.dialect.name == "postgresql":
        connection.commit()
    if before != head():
        _known(before)
        # a new database is no news; an upgrade of one with data is
        level = logging.DEBUG if _empty(connection) else logging.INFO
        command.upgrade(_config(connection), "head")
        log.log(level, "database schema migrated from %s to revision %s", before or "empty",
                head())  # fmt: skip
        if connection.dialect.name == "postgresql":
            connection.commit()
    return before, head()


def _known(revision: str | None) -> None:
    if revision is None:
        return
    try:
        ScriptDirectory.from_config(_config()).get_revision(revision)
    except CommandError:
        raise SchemaError(
            f"schema revision {revision} is unknown to this release (a newer one migrated "
            "it): run a release that knows it"
        ) from None


def upgrade(engine: sa.Engine) -> tuple[str | None, str]:
    """Bring the schema to head (once, under the lock); ``(revision before, after)``."""
    with _locked(engine) as connection:
        return _upgrade(connection)


def _empty(connection: sa.Connection) -> bool:
    return not sa.inspect(connection).get_table_names()


def prepare(engine: sa.Engine) -> None:
    """Make sure the schema is this release's (see the module docstring)."""
    if engine.dialect.name == "sqlite":
        upgrade(engine)
        return
    with engine.connect() as connection:
        now = current(connection)
    if now == head():
        return
    with _locked(engine) as connection:
        now = current(connection)
        if now is None and _empty(connection):
            _upgrade(connection)
            return
        if now == head():
            return
    _known(now)
    if now is None:
        raise SchemaError("the database has tables but no idra schema version")
    raise SchemaError(
        f"schema at revision {now}, this release needs {head()}: run "
        "`idra controlplane migrate --database-url URL` first"
    )
