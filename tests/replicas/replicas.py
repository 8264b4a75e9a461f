"""Two ``idra controlplane serve`` replicas on one real PostgreSQL, HAProxy in front
(idra/lab/balancer.py), and nodes whose packaged agent (node-daemon.pyz) keeps a real
wireguard-go interface, each in a network namespace of its own, in step with the
database through the balancer."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from idra.controlplane.store import Pool
from idra.lab import balancer, imds
from idra.lab.pki import IdentitySigner, new_instance_id
from idra.netns import Netns, Topology
from tests.agent.scripted import NODE_ADDRESSES, POOL
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
class NodeAgent:
    """One node: the packaged agent (node-daemon.pyz) on the host, its wireguard-go
    interface in a namespace of its own, and the node's IMDS stand-in."""

    node: Netns
    wg: str
    instance_id: str
    metadata: Any  # the IMDS stand-in's server
    process: subprocess.Popen
    log: Path

    def peers(self) -> dict[str, set[str]]:
        """The interface's peers as ``wg show`` has them: key → allowed ips."""
        out = self.node.run("wg", "show", self.wg, "allowed-ips").stdout
        rows = (line.split("\t", 1) for line in out.splitlines())
        return {key: set(ips.split()) for key, ips in rows}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.metadata.shutdown()
        self.metadata.server_close()


def start_agent(replicas: Replicas, pyz: Path, topo: Topology, home: Path,
                public_ip: str) -> NodeAgent:  # fmt: skip
    """One node whose agent registers and long-polls through the balancer (the flags of
    tests/agent; the replicas' heartbeat interval; at most 1 s between retries)."""
    node, wg = topo.wireguard_node(*NODE_ADDRESSES)
    instance_id = new_instance_id()
    document = IdentitySigner.document(instance_id)
    metadata = imds.serve(
        imds.Instance(document, replicas.a.signer.sign(document), public_ipv4=public_ip)
    )
    home.mkdir()
    log = home / "agent.log"
    command = [
        sys.executable, str(pyz), "run", "--api-url", replicas.lb.url,
        "--token-file", str(replicas.dirs[0] / "node.token"), "--interface", wg,
        "--driver", "uapi", "--imds-url", f"http://127.0.0.1:{metadata.server_address[1]}",
        "--state-dir", str(home / "state"), "--heartbeat-interval", str(HEARTBEAT_S),
        "--scan-interval", "1", "--backoff-max", "1", "--sysctl-file", str(home / "none.conf"),
        "--metrics-addr", f"127.0.0.1:{free_port()}", "--interface-netns", node.name,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=log.open("a"), stderr=subprocess.STDOUT,
        env={"SHIV_ROOT": str(home.parent / "shiv"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    return NodeAgent(node, wg, instance_id, metadata, process, log)


def database_peers(url: str) -> dict[str, dict[str, set[str]]]:
    """Per instance id: its node's peers in the database, key → allowed ips."""
    pool = Pool(ipaddress.IPv4Network(POOL["ipv4"]), ipaddress.IPv6Network(POOL["ipv6"]))
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT n.instance_id, p.public_key, p.slot FROM peers p "
            "JOIN nodes n ON n.id = p.node_id"
        ).fetchall()
    found: dict[str, dict[str, set[str]]] = {}
    for instance_id, key, slot in rows:
        found.setdefault(instance_id, {})[key] = set(pool.addresses(slot))
    return found


def converge(agents: list[NodeAgent], url: str, timeout: float) -> dict:
    """Until every agent's interface (``wg show``) holds exactly its node's peers in the
    database, with their addresses (bounded); the database's peers then."""
    deadline = time.monotonic() + timeout
    while True:
        expected = database_peers(url)
        wrong = [a.instance_id for a in agents if a.peers() != expected.get(a.instance_id, {})]
        if not wrong:
            return expected
        if time.monotonic() > deadline:
            raise AssertionError(f"interfaces of {wrong} did not converge to the database's peers")
        time.sleep(0.2)
