"""A throwaway PostgreSQL cluster for ``idra lab up --replicas 2`` (Debian's server
binaries): ``initdb`` in a directory of the lab, run by the unprivileged ``postgres``
user, listening on loopback only (inside the control plane's namespace), trust
authentication for loopback, removed by ``idra lab down``."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")
USER = "postgres"


def bindir() -> Path:
    """The newest installed server's ``bin`` directory."""
    found = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run ./scripts/install")
    return found[-1]


class Cluster:
    """``root``/data, owned by ``postgres``; ``prefix`` runs a command where the server
    should live (``ip netns exec NS``)."""

    def __init__(self, root: Path, port: int = 5432, prefix: tuple[str, ...] = ()) -> None:
        self.root, self.data, self.port, self.prefix = root, root / "data", port, prefix

    def _run(self, tool: str, *args: str, inside: bool = True) -> None:
        command = [
            *(self.prefix if inside else ()),
            "runuser",
            "-u",
            USER,
            "--",
            str(bindir() / tool),
            *args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}")

    def create(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = pwd.getpwnam(USER)
        os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust",
                  "--encoding=UTF8", "--locale=C.UTF-8")  # fmt: skip
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def start(self) -> None:
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.root / "server.log"))  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        """Stop the server at once and delete its files (nothing left behind)."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "immediate", "-D",
                          str(self.data), inside=False)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)
