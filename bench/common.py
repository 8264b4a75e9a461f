"""Shared by the benchmarks: entering a namespace, a real control plane inside one,
bulk peer loading straight into its database, and per-process CPU and memory."""

from __future__ import annotations

import ctypes
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from idra.lab.pki import LAB_ACCOUNT, IdentitySigner
from idra.netns import Netns, Topology

CLONE_NEWNET = 0x40000000
PORT = 8080
TICKS = os.sysconf("SC_CLK_TCK")
BIN = Path(sys.executable).parent  # the virtualenv's commands


@contextmanager
def inside(ns: Netns) -> Iterator[None]:
    """Run this thread (and the threads and processes it starts) inside ``ns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{ns.name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(target)


@dataclass
class ControlPlane:
    """``idra controlplane serve`` on plain http inside a namespace's loopback."""

    ns: Netns
    db: Path
    tokens: dict[str, Path]
    url: str = f"http://127.0.0.1:{PORT}"
    signer: IdentitySigner = field(default_factory=IdentitySigner)  # plays AWS
    credentials: dict[str, str] = field(default_factory=dict)  # node id → credential

    @classmethod
    def start(
        cls, topo: Topology, ns: Netns, workdir: Path, interval: int = 10,
        database_url: str | None = None, port: int = PORT, like: ControlPlane | None = None,
    ) -> ControlPlane:  # fmt: skip
        """``database_url``: PostgreSQL instead of a SQLite file; ``like``: another replica
        of that plane (its tokens and identity signer) on ``port``."""
        tokens = like.tokens if like else {}
        for kind in () if like else ("node", "operator", "client"):
            tokens[kind] = workdir / f"{kind}.token"
            tokens[kind].write_text(secrets.token_urlsafe(32))
            tokens[kind].chmod(0o600)
        plane = cls(ns, workdir / "cp.db", tokens, f"http://127.0.0.1:{port}")
        if like:
            plane.signer, plane.credentials = like.signer, like.credentials
        cert = plane.signer.write_cert(workdir / f"iid-{port}.pem")
        database = ["--database-url", database_url] if database_url else ["--db", str(plane.db)]
        topo.spawn(
            ns, str(BIN / "idra"), "controlplane", "serve", *database,
            "--listen", f"127.0.0.1:{port}", "--heartbeat-interval", str(interval),
            *(arg for kind, path in tokens.items() for arg in (f"--{kind}-token-file", str(path))),
            "--iid-cert-file", str(cert), "--aws-account", LAB_ACCOUNT,
            "--insecure-skip-aws-verify",  # the bench plays AWS with its own key
            "--allow-public-ip-range", "192.0.2.0/24",
            "--max-connections-per-client", "16384",  # every simulated node is on loopback
            log=workdir / f"cp-{port}.log",
        )  # fmt: skip
        with inside(ns):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    httpx.get(f"{plane.url}/v1/nodes", timeout=1)
                    return plane
                except httpx.HTTPError:
                    time.sleep(0.2)
        raise RuntimeError(
            f"control plane did not start: {(workdir / f'cp-{port}.log').read_text()}"
        )

    def token(self, kind: str) -> str:
        return self.tokens[kind].read_text()

    def identity(self, instance_id: str) -> dict[str, str]:
        """The instance's identity document, signed by the key the plane trusts."""
        document = IdentitySigner.document(instance_id)
        return {"document": document, "signature": self.signer.sign(document)}

    def register(self, instance_id: str, public_key: str) -> str:
        """A node record as the agent's registration makes it (the agent then registers
        again with the credential, see :meth:`start_imds`)."""
        body = {
            "identity": self.identity(instance_id), "public_ip": "192.0.2.1",
            "public_key": public_key, "listen_port": 51820, "agent_version": "bench",
        }  # fmt: skip
        with inside(self.ns):
            reply = httpx.post(
                f"{self.url}/v1/nodes", json=body, timeout=10,
                headers={"Authorization": f"Bearer {self.token('node')}"},
            )  # fmt: skip
        reply.raise_for_status()
        self.credentials[reply.json()["node_id"]] = reply.json()["node_credential"]
        return reply.json()["node_id"]

    def start_imds(self, topo: Topology, node_id: str, instance_id: str, state: Path) -> str:
        """An IMDSv2 stand-in for the agent (in the plane's namespace) and the node's
        credential in the agent's state dir, as after an agent restart; returns its URL."""
        identity = self.identity(instance_id)
        (state / "identity.json").write_text(identity["document"])
        (state / "identity.sig").write_text(identity["signature"])
        (state / "node.credential").write_text(self.credentials[node_id])
        (state / "node.credential").chmod(0o600)
        port = PORT + 1 + len(topo.processes)
        topo.spawn(
            self.ns, sys.executable, "-m", "idra.lab.services", "imds",
            "--document", str(state / "identity.json"), "--signature", str(state / "identity.sig"),
            "--public-ipv4", "192.0.2.1", "--listen", f"127.0.0.1:{port}", log=state / "imds.log",
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while "ready" not in (state / "imds.log").read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError("the IMDS stand-in did not start")
            time.sleep(0.1)
        return f"http://127.0.0.1:{port}"

    def add_peers(self, node_id: str, keys: list[str]) -> None:
        """Assign ``keys`` to the node straight in the database, one transaction, with the
        change-log entries the API would write (the API assigns one client per call)."""
        with sqlite3.connect(self.db, timeout=30, isolation_level=None) as db:
            db.execute("BEGIN IMMEDIATE")
            start = db.execute("SELECT COALESCE(MAX(slot), 1) FROM peers").fetchone()[0] + 1
            now = time.time()
            db.executemany(
                "INSERT INTO peers (public_key, node_id, slot, created_at) VALUES (?, ?, ?, ?)",
                [(key, node_id, start + i, now) for i, key in enumerate(keys)],
            )
            db.executemany(
                "INSERT INTO key_owners (public_key, kind, slot) VALUES (?, 'client', ?)",
                [(key, start + i) for i, key in enumerate(keys)],
            )
            _log_changes(db, node_id, keys)
            db.execute("COMMIT")

    def remove_peers(self, node_id: str, keys: list[str]) -> None:
        with sqlite3.connect(self.db, timeout=30, isolation_level=None) as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM peers WHERE public_key = ?", [(k,) for k in keys])
            db.executemany("DELETE FROM key_owners WHERE public_key = ?", [(k,) for k in keys])
            _log_changes(db, node_id, keys)
            db.execute("COMMIT")


def _log_changes(db: sqlite3.Connection, node_id: str, keys: list[str]) -> None:
    """The change-log rows the store would write: versions from the counter row."""
    top = db.execute(
        "UPDATE counters SET value = value + ? WHERE name = 'version' RETURNING value",
        (len(keys),),
    ).fetchone()[0]
    first, now = top - len(keys) + 1, time.time()
    db.executemany(
        "INSERT INTO changes (version, node_id, public_key, created_at) VALUES (?, ?, ?, ?)",
        [(first + i, node_id, key, now) for i, key in enumerate(keys)],
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mb(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory in MiB."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {key: int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def interface_bytes(ns: Netns, ifname: str = "lo") -> int:
    """Bytes sent on an interface of ``ns`` (on loopback: every byte exchanged)."""
    return int(ns.run("cat", f"/sys/class/net/{ifname}/statistics/tx_bytes").stdout)
