"""Two ``idra controlplane serve`` replicas on one real PostgreSQL, HAProxy in front
(idra/lab/balancer.py), and agents that follow sync v2 through the balancer.

:class:`Agent` is the node agent's peer sync reduced to its protocol (register, heartbeat
every interval, one outstanding long-poll, apply full lists and deltas to a set); the
packaged agent's WireGuard side is tested elsewhere (tests/agent, tests/lab)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from idra.lab import balancer
from tests.controlplane.conftest import ControlPlane, free_port, start, wg_key

HEARTBEAT_S = 2


@dataclass
class Replicas:
    """Replica A and B (ControlPlane each) and ``lb``: the same, through HAProxy."""

    a: ControlPlane
    b: ControlPlane
    lb: ControlPlane
    haproxy: subprocess.Popen
    dirs: tuple[Path, Path]
    database_url: str
    args: tuple[str, ...] = ()

    def restart(self, which: str) -> None:
        """Start a killed replica again on its port (same tokens, same signer)."""
        old: ControlPlane = getattr(self, which)
        port = int(old.url.rsplit(":", 1)[1])
        tmp = self.dirs[0 if which == "a" else 1]
        new = start(tmp, *self.args, port=port, tokens=old.tokens, database=self.database_url)
        new.credentials, new.instances = self.lb.credentials, self.lb.instances
        setattr(self, which, new)

    def stop(self) -> None:
        for replica in (self.a, self.b):
            if replica.process.poll() is None:
                replica.process.terminate()
                replica.process.wait(10)
        self.haproxy.terminate()
        self.haproxy.wait(10)


def start_replicas(tmp: Path, database_url: str, *extra: str) -> Replicas:
    args = ("--heartbeat-interval", str(HEARTBEAT_S), *extra)
    dir_a, dir_b = tmp / "a", tmp / "b"
    dir_a.mkdir()
    dir_b.mkdir()
    a = start(dir_a, *args, database=database_url)
    shutil.copy(dir_a / "iid.key", dir_b / "iid.key")  # B trusts the same test signer
    b = start(dir_b, *args, tokens=a.tokens, database=database_url)
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(balancer.config(f"127.0.0.1:{port}", [a.url[7:], b.url[7:]], tls=False))
    log = (tmp / "haproxy.log").open("a")
    proxy = subprocess.Popen(balancer.command(cfg), stdout=log, stderr=subprocess.STDOUT)
    balancer.wait_listening("127.0.0.1", port, proxy)
    lb = ControlPlane(f"http://127.0.0.1:{port}", a.tokens, proxy, tmp / "haproxy.log",
                      signer=a.signer)  # fmt: skip
    # One view of the nodes' credentials, whichever way a node registered.
    a.credentials = b.credentials = lb.credentials
    a.instances = b.instances = lb.instances
    replicas = Replicas(a, b, lb, proxy, (dir_a, dir_b), database_url, args)
    wait_healthy(lb, 2)
    return replicas


def wait_healthy(lb: ControlPlane, replicas: int, timeout: float = 15) -> None:
    """Until HAProxy's checks have seen the replicas up (a request through it answers)."""
    deadline = time.monotonic() + timeout + balancer.CHECK_INTERVAL_MS / 1000 * 2
    seen = 0
    while seen < replicas * 2:
        try:
            with httpx.Client(base_url=lb.url, timeout=2) as http:
                seen = seen + 1 if http.get("/healthz").status_code == 200 else 0
        except httpx.HTTPError:
            seen = 0
        assert time.monotonic() < deadline, "the replicas never became healthy"
        time.sleep(0.1)


def add_peer(url: str, token: str, key: str | None = None, attempts: int = 50) -> dict:
    """``POST /v1/peers`` as a client app would: retried while the service recovers."""
    key = key or wg_key()
    for _ in range(attempts):
        try:
            with httpx.Client(base_url=url, timeout=5) as http:
                reply = http.post("/v1/peers", json={"public_key": key},
                                  headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            if reply.status_code == 200:
                return reply.json() | {"public_key": key}
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("POST /v1/peers never succeeded")


@dataclass
class Agent:
    """One node's sync v2 loop and heartbeat, through ``url`` (the balancer)."""

    url: str
    node_id: str
    credential: str
    peers: set[str] = field(default_factory=set)
    version: int | None = None
    heartbeats: list[float] = field(default_factory=list)  # monotonic times of 200s
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Agent:
        threading.Thread(target=self._sync, daemon=True).start()
        threading.Thread(target=self._beat, daemon=True).start()
        return self

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15,
                            headers={"Authorization": f"Bearer {self.credential}"})  # fmt: skip

    def _sync(self) -> None:
        http = self._client()
        while not self.stop.is_set():
            params = {"wait": 5} if self.version is None else {"since": self.version, "wait": 5}
            try:
                reply = http.get(f"/v1/nodes/{self.node_id}/peers", params=params)
                reply.raise_for_status()
            except httpx.HTTPError:
                self.errors += 1
                http.close()
                http = self._client()  # a new connection: the balancer picks a live replica
                self.stop.wait(0.1)
                continue
            body = reply.json()
            keys = {p["public_key"] for p in body["peers"]}
            if body["full"]:
                self.peers = keys
            else:
                self.peers = (self.peers - set(body["removed"])) | keys
            self.version = body["version"]
        http.close()

    def _beat(self) -> None:
        http = self._client()
        body = heartbeat_body()
        while not self.stop.is_set():
            try:
                reply = http.post(f"/v1/nodes/{self.node_id}/heartbeat", json=body)
                if reply.status_code == 200:
                    self.heartbeats.append(time.monotonic())
            except httpx.HTTPError:
                self.errors += 1
                http.close()
                http = self._client()
                self.stop.wait(0.1)
                continue
            self.stop.wait(HEARTBEAT_S)
        http.close()


def heartbeat_body() -> dict:
    stats = {"load1": 0.1, "cpu_pct": 1.0, "mem_pct": 10.0, "rx_bytes": 0, "tx_bytes": 0,
             "rx_bps": 0.0, "tx_bps": 0.0, "peers": 0, "active_peers": 0}  # fmt: skip
    integrity = {"nftables_sha256": "a" * 64, "sysctl_ok": True, "agent_sha256": "b" * 64}
    return {"state": "active", "peers_version": 0, "stats": stats, "integrity": integrity}


def converge(agents: list[Agent], expected: dict[str, set[str]], timeout: float) -> None:
    """Until every agent's peers are what the database says (bounded)."""
    deadline = time.monotonic() + timeout
    while any(a.peers != expected.get(a.node_id, set()) for a in agents):
        if time.monotonic() > deadline:
            wrong = [a.node_id for a in agents if a.peers != expected.get(a.node_id, set())]
            raise AssertionError(f"agents {wrong} did not converge to the database's peers")
        time.sleep(0.05)
