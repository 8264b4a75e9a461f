"""The agent against the real control plane and real wireguard-go interfaces.

host: control plane on 127.0.0.1, node-daemon (talks to the node's UAPI socket), and
      an IMDSv2 stand-in serving the node's identity document, signed by the test key
      the control plane trusts
node namespace: tunnel interface (wireguard-go) ── veth ── client namespace(s)
"""

from __future__ import annotations

import contextlib
import http.server
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from idra.lab import imds
from idra.lab.pki import IdentitySigner
from idra.netns import Netns, Topology, unique_name, wg_keypair
from tests.agent.scripted import NODE_ADDRESSES, ScriptedControlPlane, ScriptedImds
from tests.controlplane.conftest import ControlPlane, free_port, start

NODE_IP = "192.0.2.1"
INSTANCE_ID = "i-0agenttest"


class Unreachable(AssertionError):
    """The agent's metrics endpoint did not answer (yet)."""


def eventually(condition: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    """Wait until ``condition`` holds, at most ``timeout`` s. A metrics endpoint not up
    yet counts as "not yet"; any other error fails at once."""
    deadline, last = time.monotonic() + timeout, ""
    while True:
        try:
            if condition():
                return
        except Unreachable as exc:
            last = f" (last: {exc})"
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}{last}")
        time.sleep(0.1)


class Forwarder:
    """A loopback HTTP relay in front of the control plane at ``upstream`` (``url``: the
    agent's ``--api-url``). Only the headers the agent's calls need cross it. A subclass
    overrides :meth:`exchange` to watch or change a request, or to leave it unanswered."""

    HEADERS = ("authorization", "x-node-credential", "content-type")

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        forwarder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_) -> None:
                pass

            def _forward(self) -> None:
                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                reply = forwarder.exchange(
                    self.command, parts.path, dict(parse_qsl(parts.query)), body, self.headers
                )
                if reply is None:
                    self.close_connection = True
                    return  # never answered
                status, content = reply
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def exchange(
        self, method: str, path: str, query: dict[str, str], body: bytes, headers
    ) -> tuple[int, bytes] | None:
        """Forward one request; its (status, body), 502 if the control plane is down, or
        None to leave it unanswered (the connection closes)."""
        headers = {k: v for k, v in headers.items() if k.lower() in self.HEADERS}
        url = f"{self.upstream}{path}?{urlencode(query)}" if query else self.upstream + path
        try:
            reply = httpx.request(method, url, content=body, headers=headers, timeout=90)
        except httpx.HTTPError:
            return 502, b'{"detail":"upstream down"}'
        return reply.status_code, reply.content

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Client:
    ns: Netns
    wg: str
    public_key: str
    address: str


@dataclass
class Env:
    cp: ControlPlane
    topo: Topology
    node: Netns
    wg: str
    tmp: Path
    imds: imds.Instance
    imds_url: str
    metrics_port: int = field(default_factory=free_port)
    agent: subprocess.Popen | None = None
    log: Path | None = None
    clients: list[Client] = field(default_factory=list)

    def start_agent(
        self,
        pyz: Path | None = None,
        *extra: str,
        prefix: tuple[str, ...] = (),
        wait: bool = True,
    ) -> subprocess.Popen:
        """Start the agent (``prefix``: a command that execs it, e.g. in a namespace)."""
        command = [sys.executable, str(pyz)] if pyz else [sys.executable, "-m", "node_daemon"]
        command = [*prefix, *command]
        self.log = self.tmp / "agent.log"
        self.agent = subprocess.Popen(
            [
                *command,
                "run",
                "--api-url",
                self.cp.url,
                "--token-file",
                str(self.tmp / "node.token"),
                "--interface",
                self.wg,
                "--driver",
                "uapi",
                "--imds-url",
                self.imds_url,
                "--state-dir",
                str(self.tmp / "state"),
                "--heartbeat-interval",
                "0.5",
                "--scan-interval",
                "1",
                "--backoff-max",
                "2",
                "--sysctl-file",
                str(self.tmp / "none.conf"),
                "--metrics-addr",
                f"127.0.0.1:{self.metrics_port}",
                "--interface-netns",
                self.node.name,
                *extra,
            ],
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
            env={"SHIV_ROOT": str(self.tmp / "shiv"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        if wait:
            eventually(
                lambda: self.metric("idra_agent_syncs_total", 'result="ok"') > 0,
                what="the agent's first sync",
            )
        return self.agent

    def stop_agent(self, kill: bool = False) -> None:
        if self.agent and self.agent.poll() is None:
            self.agent.kill() if kill else self.agent.terminate()
            self.agent.wait(10)

    def metrics(self) -> str:
        """The agent's metrics page; raises :class:`Unreachable` if it does not answer."""
        try:
            reply = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2)
            reply.raise_for_status()
        except httpx.HTTPError as exc:
            raise Unreachable(f"agent metrics: {type(exc).__name__}: {exc}") from None
        return reply.text

    def metric(self, name: str, labels: str = "") -> float:
        """One sample's value. A labelled sample not counted yet is 0 (the client library
        shows a label set once used) when its family is exported; a family missing from
        the page, or a page that does not answer, fails the test."""
        text = self.metrics()
        pattern = rf"^{name}{{{labels}}} (\S+)$" if labels else rf"^{name} (\S+)$"
        match = re.search(pattern, text, re.MULTILINE)
        if match:
            return float(match.group(1))
        family = rf"(?:{name}|{name.removesuffix('_total')})"
        if labels and re.search(rf"^# TYPE {family} ", text, re.MULTILINE):
            return 0.0
        raise AssertionError(f"{name}{{{labels}}}: not on the agent's metrics page")

    def dump(self) -> dict[str, list[str]]:
        """The node interface's peers: key → [endpoint, allowed, handshake, rx, tx]."""
        lines = self.node.run("wg", "show", self.wg, "dump").stdout.splitlines()[1:]
        return {f[0]: [f[2], f[3], f[4], f[5], f[6]] for f in (line.split("\t") for line in lines)}

    def add_client(self) -> Client:
        """A real WireGuard client: registered through POST /v1/peers, tunnel up."""
        ns = self.topo.netns("client")
        index = len(self.clients) + 2
        self.topo.link(self.node, f"c{index}", ns, "eth0")
        self.node.addr(f"c{index}", "192.0.2.1/32")
        self.node.route(f"198.18.{index}.2/32", "dev", f"c{index}")
        ns.addr("eth0", f"198.18.{index}.2/32")
        ns.route(f"{NODE_IP}/32", "dev", "eth0")
        private, public = wg_keypair()
        with self.cp.client("client") as api:
            assignment = api.post("/v1/peers", json={"public_key": public}).json()
        client = Client(ns, unique_name("wgc"), public, assignment["addresses"]["ipv4"])
        self.topo.wireguard(ns, client.wg)
        ns.run(
            "wg",
            "set",
            client.wg,
            "private-key",
            "/dev/stdin",
            "peer",
            assignment["node_public_key"],
            "endpoint",
            assignment["endpoint"],
            "allowed-ips",
            "10.96.0.0/12",
            input=private,
        )
        ns.addr(client.wg, client.address)
        ns.ip("link", "set", client.wg, "up")
        ns.route("10.96.0.0/12", "dev", client.wg)
        self.clients.append(client)
        eventually(lambda: public in self.dump(), what="the client's peer on the node")
        return client

    def ping(self, client: Client, count: int = 3, interval: float = 0.2) -> int:
        out = client.ns.run(
            "ping",
            "-n",
            "-q",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            "1",
            "10.96.0.1",
            check=False,
            timeout=count * interval + 10,
        ).stdout
        return int(re.search(r"(\d+) received", out).group(1))


@pytest.fixture
def env(tmp_path):
    cp = start(tmp_path)
    topo = Topology("agent")
    try:
        node, wg = topo.wireguard_node(*NODE_ADDRESSES)
        instance = signed_instance(cp.signer, INSTANCE_ID)
        metadata = imds.serve(instance)
        url = f"http://127.0.0.1:{metadata.server_address[1]}"
        environment = Env(cp, topo, node, wg, tmp_path, instance, url)
        yield environment
        environment.stop_agent()
        metadata.shutdown()
        cp = environment.cp  # a test may have restarted it
    finally:
        topo.close()
        cp.process.terminate()
        cp.process.wait(10)


def signed_instance(signer: IdentitySigner, instance_id: str) -> imds.Instance:
    """Metadata of one instance whose identity document the control plane trusts."""
    document = IdentitySigner.document(instance_id)
    return imds.Instance(document, signer.sign(document), public_ipv4=NODE_IP)


@contextlib.contextmanager
def scripted_world(
    tmp: Path, cp: ScriptedControlPlane, prefix: str
) -> Iterator[tuple[Env, ScriptedControlPlane, ScriptedImds]]:
    """``cp`` (a scripted control plane, tests/agent/scripted.py), a scripted IMDSv2
    stand-in and a node namespace (names start with ``prefix``) with a wireguard-go
    interface, for :func:`start_scripted_agent`. Afterwards the agent is stopped and
    everything closed, ``cp`` included."""
    imds_, topo, env = None, None, None
    try:
        imds_, topo = ScriptedImds(), Topology(prefix)
        node, wg = topo.wireguard_node(*NODE_ADDRESSES)
        env = Env(SimpleNamespace(url=cp.url), topo, node, wg, tmp, None, imds_.url)
        yield env, cp, imds_
    finally:
        if env:
            env.stop_agent()
        if topo:
            topo.close()
        cp.close()
        if imds_:
            imds_.close()


def start_scripted_agent(env: Env, pyz: Path, *flags: str) -> None:
    """The packaged agent against the scripted control plane and IMDS of ``env``
    (:func:`scripted_world`), ``flags`` (intervals, bounds) after the common ones; returns
    after its first sync. Its sysctl file is ``sysctl.conf`` in ``env.tmp`` (if any)."""
    (env.tmp / "node.token").write_text("scripted-node-token")
    env.log = env.tmp / "agent.log"
    env.agent = subprocess.Popen(
        [sys.executable, str(pyz), "run", "--api-url", env.cp.url,
         "--token-file", str(env.tmp / "node.token"), "--interface", env.wg,
         "--interface-netns", env.node.name, "--driver", "uapi", "--imds-url", env.imds_url,
         "--state-dir", str(env.tmp / "state"), "--sysctl-file", str(env.tmp / "sysctl.conf"),
         "--metrics-addr", f"127.0.0.1:{env.metrics_port}", *flags],
        stdout=env.log.open("a"), stderr=subprocess.STDOUT,
        env={"SHIV_ROOT": str(env.tmp / "shiv"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    eventually(lambda: env.metric("idra_agent_syncs_total", 'result="ok"') > 0, what="first sync")
