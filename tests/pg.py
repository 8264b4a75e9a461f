"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, no mocks.

``postgres_cluster`` (session): ``initdb`` in a temporary directory as the unprivileged
``postgres`` system user (the server refuses to run as root), listening on 127.0.0.1 on a
free port and on a unix socket inside that directory, trust authentication for loopback
only; stopped and removed at the end of the session, even when tests fail.
``postgres`` (module): the URL of a fresh database (``CREATE DATABASE … TEMPLATE
template0``), dropped after the module. ``scripts/install`` installs the ``postgresql``
package; without it these fixtures fail with a message saying so.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

PG_ROOT = Path("/usr/lib/postgresql")


def _bindir() -> Path:
    """The newest installed server's bin directory (the version is not hard-coded)."""
    versions = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin): "
                           "run ./scripts/install")  # fmt: skip
    return versions[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """One ``initdb`` cluster owned by the ``postgres`` system user (when we are root)."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="idra-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.root.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust",
                  "--encoding=UTF8", "--locale=C.UTF-8")  # fmt: skip
        # Throwaway data: durability off makes the tests fast; enough connections for
        # two servers under a concurrent load test.
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "300",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        atexit.register(self.remove)
        self.start()

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bindir / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}")
        return result

    def start(self) -> None:
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.root / "server.log"))  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data))

    def restart(self) -> None:
        self._run("pg_ctl", "restart", "-w", "-t", "60", "-m", "fast", "-D", str(self.data),
                  "-l", str(self.root / "server.log"))  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        """The URL a user would give ``--database-url``."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple]:
        """Run one statement (autocommit) as the superuser; rows if it returns any."""
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def create_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"t_{secrets.token_hex(6)}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def remove(self) -> None:
        """Stop the server (immediately) and delete everything; safe to call twice."""
        if not self.root.exists():
            return
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster():
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def postgres(postgres_cluster):
    """The URL (``postgresql://…``) of a fresh database for this test module."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)
