"""``node-daemon run`` with the WireGuard interface replaced by a stand-in, for peer counts
wireguard-go cannot hold (it stops at 65,536). Everything else is the real agent: CLI,
HTTP client, validation, delta planning, state, metrics.

    python -m bench.memory_agent run --api-url ... (the flags of node-daemon run)
"""

from __future__ import annotations

import ipaddress
import sqlite3
import tempfile
from collections.abc import Iterator

import bench.as_packaged  # noqa: F401 - first: the packaged agent's imports, no rich
import node_daemon.cli
import node_daemon.host
import node_daemon.wg
from bench.keys import random_key
from node_daemon.cli import main
from node_daemon.wg import Device, PeerState


class MemoryDriver:
    """Holds the peers like an interface would, outside the agent's memory: in an SQLite
    file (its pages are the kernel's cache, not the process's; SQLite's own cache is
    2 MiB), so what the bench measures is the agent, not the stand-in."""

    def __init__(self, interface: str) -> None:
        self.has_key, self.port = False, 0
        self.file = tempfile.NamedTemporaryFile(prefix="idra-bench-", suffix=".db")  # noqa: SIM115
        self.db = sqlite3.connect(self.file.name, check_same_thread=False, isolation_level=None)
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE peers (key TEXT PRIMARY KEY, ips TEXT NOT NULL) WITHOUT ROWID;"
        )
        self.key = random_key()

    def read(self) -> Device:
        device = Device(has_private_key=self.has_key, listen_port=self.port)
        device.peers = {key: PeerState(ips) for key, ips in self.peers_now()}
        return device

    def peers_now(self) -> list[tuple[str, str]]:
        return self.db.execute("SELECT key, ips FROM peers").fetchall()

    def peers(self) -> Iterator[tuple[str, PeerState]]:
        last = ""
        while True:  # streamed, as from the UAPI socket
            rows = self.db.execute(
                "SELECT key, ips FROM peers WHERE key > ? ORDER BY key LIMIT 1000", (last,)
            ).fetchall()
            if not rows:
                return
            for key, ips in rows:
                yield key, PeerState(ips)
            last = rows[-1][0]

    def public_key(self) -> str:
        return self.key

    def configure(self, private_key: str | None, listen_port: int) -> None:
        self.has_key = self.has_key or private_key is not None
        self.port = listen_port

    def apply(self, upserts: dict[str, str], removes: list[str]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("DELETE FROM peers WHERE key = ?", ((key,) for key in removes))
        self.db.executemany("INSERT OR REPLACE INTO peers VALUES (?, ?)", upserts.items())
        self.db.execute("COMMIT")


def _addresses(interface: str, netns: str | None = None) -> list:
    """The tunnel addresses a booted node's interface has."""
    return [ipaddress.ip_interface("10.96.0.1/12"), ipaddress.ip_interface("fd49:4452:4100::1/64")]


if __name__ == "__main__":
    node_daemon.wg.make_driver = lambda kind, interface: MemoryDriver(interface)
    node_daemon.host.interface_addresses = _addresses
    node_daemon.cli.existing_interface = lambda interface, driver: interface  # no real one
    main()
