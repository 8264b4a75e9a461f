"""The real control plane, started through ``idra controlplane serve`` on loopback."""

from __future__ import annotations

import base64
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from idra.lab.pki import make_ca_and_server


def wg_key() -> str:
    """A random public key (32 bytes, base64): an identifier for tests, not a real key."""
    return base64.b64encode(os.urandom(32)).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ControlPlane:
    url: str
    tokens: dict[str, str]
    process: subprocess.Popen
    log: Path
    verify: ssl.SSLContext | bool = True

    def client(self, kind: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[kind]}"} if kind else {}
        return httpx.Client(base_url=self.url, headers=headers, verify=self.verify, timeout=10)

    def register(
        self,
        instance_id: str | None = None,
        region: str = "eu-central-1",
        public_ip: str = "203.0.113.10",
    ) -> str:
        body = {
            "instance_id": instance_id or f"i-{secrets.token_hex(8)}",
            "public_ip": public_ip,
            "public_key": wg_key(),
            "listen_port": 51820,
            "region": region,
            "agent_version": "test",
        }
        with self.client("node") as node:
            reply = node.post("/v1/nodes", json=body)
        assert reply.status_code == 201, reply.text
        return reply.json()["node_id"]

    def heartbeat(self, node_id: str, active_peers: int = 0, **integrity) -> dict:
        body = {
            "state": "active",
            "peers_version": 0,
            "stats": {
                "load1": 0.1,
                "cpu_pct": 1.0,
                "mem_pct": 10.0,
                "rx_bytes": 0,
                "tx_bytes": 0,
                "rx_bps": 0.0,
                "tx_bps": 0.0,
                "peers": 0,
                "active_peers": active_peers,
            },
            "integrity": {"nftables_sha256": "a" * 64, "sysctl_ok": True, "agent_sha256": "b" * 64}
            | integrity,
        }
        with self.client("node") as node:
            reply = node.post(f"/v1/nodes/{node_id}/heartbeat", json=body)
        assert reply.status_code == 200, reply.text
        return reply.json()


def start(
    tmp: Path,
    *extra: str,
    tls: bool = False,
    port: int | None = None,
    tokens: dict[str, str] | None = None,
) -> ControlPlane:
    """Start (or, with the same ``tmp``, ``port`` and ``tokens``, restart) the server."""
    tokens = tokens or {kind: secrets.token_urlsafe(24) for kind in ("node", "operator", "client")}
    args = []
    for kind, token in tokens.items():
        (tmp / f"{kind}.token").write_text(token)
        args += [f"--{kind}-token-file", str(tmp / f"{kind}.token")]
    verify: ssl.SSLContext | bool = True
    if tls:
        ca, cert, key = make_ca_and_server(tmp / "pki", ["127.0.0.1"])
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        verify = ssl.create_default_context(cafile=ca)
    port = port or free_port()
    log = tmp / "controlplane.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "idra.cli",
            "controlplane",
            "serve",
            "--db",
            str(tmp / "cp.db"),
            "--listen",
            f"127.0.0.1:{port}",
            *args,
            *extra,
        ],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"control plane did not start: {log.read_text()}") from None
            time.sleep(0.1)
    scheme = "https" if tls else "http"
    return ControlPlane(f"{scheme}://127.0.0.1:{port}", tokens, process, log, verify)


@pytest.fixture
def cp(tmp_path):
    server = start(tmp_path, "--keep-changes", "50")
    yield server
    server.process.terminate()
    server.process.wait(10)
