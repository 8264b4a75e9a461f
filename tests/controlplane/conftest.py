"""The real control plane, started through ``idra controlplane serve`` on loopback.

It trusts one test certificate for instance identity documents (an
:class:`IdentitySigner` kept in the test folder, so a restart trusts the same key);
``ControlPlane.register`` signs a document for the instance and keeps the node
credential it gets, which ``heartbeat`` and ``client(node_id)`` then use.

Every test in this folder runs on both stores (the module-scoped ``backend`` parameter):
SQLite (``cp.db`` in the test's folder) and PostgreSQL (the throwaway cluster of
``tests/pg.py``, one fresh database per folder ``start`` is given, so a restart with the
same folder finds the same database). ``sql`` reads or writes the database directly,
whichever it is.
"""

from __future__ import annotations

import base64
import os
import resource
import secrets
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from idra.controlplane.database import parse_url
from idra.lab.pki import LAB_ACCOUNT, IdentitySigner, make_ca_and_server, new_instance_id

# Documentation ranges the tests use as node addresses (not global unicast).
TEST_RANGES = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")


def wg_key() -> str:
    """A random public key (32 bytes, base64): an identifier for tests, not a real key."""
    return base64.b64encode(os.urandom(32)).decode()


def write_token(path: Path, token: str) -> Path:
    """A token file only its owner can read (``serve`` refuses any other)."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(token)
    return path


_BACKEND: dict = {"name": "sqlite", "cluster": None, "databases": {}}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"], autouse=True)
def backend(request):
    """The store of every server this module starts (see the module docstring)."""
    _BACKEND["name"] = request.param
    if request.param == "postgresql":
        _BACKEND["cluster"] = request.getfixturevalue("postgres_cluster")
    yield request.param
    for url in _BACKEND["databases"].values():
        _BACKEND["cluster"].drop_database(url)
    _BACKEND.update(name="sqlite", cluster=None, databases={})


def pytest_collection_modifyitems(config, items) -> None:
    """``@pytest.mark.only_on("sqlite")``: the test runs on that store alone (deselected,
    not skipped, on the other)."""
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("only_on")
        callspec = getattr(item, "callspec", None)
        on = callspec.params.get("backend") if callspec else None
        (drop if marker and on and on != marker.args[0] else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def database_url(tmp: Path) -> str:
    """The database of the server started with ``tmp`` (created on first use)."""
    if _BACKEND["name"] == "sqlite":
        return f"sqlite:///{tmp / 'cp.db'}"
    databases = _BACKEND["databases"]
    if tmp not in databases:
        databases[tmp] = _BACKEND["cluster"].create_database()
    return databases[tmp]


def sql(url: str, statement: str, params: dict | None = None) -> list[tuple]:
    """Run one statement on the database at ``url`` (committed); its rows, if any."""
    engine = sa.create_engine(parse_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(statement), params or {})
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


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
    signer: IdentitySigner | None = None
    db: Path | None = None  # the SQLite file (None on PostgreSQL)
    database_url: str = ""
    credentials: dict[str, str] = field(default_factory=dict)  # node id → credential
    instances: dict[str, str] = field(default_factory=dict)  # node id → instance id

    def client(self, kind: str | None) -> httpx.Client:
        """A token kind (node = NODE_TOKEN, operator, client), a node id (that node's
        credential), or None (no credential at all)."""
        secret = self.tokens.get(kind) or self.credentials.get(kind) if kind else None
        headers = {"Authorization": f"Bearer {secret}"} if kind else {}
        return httpx.Client(base_url=self.url, headers=headers, verify=self.verify, timeout=10)

    def identity(self, instance_id: str | None = None, region: str = "eu-central-1",
                 account: str = LAB_ACCOUNT) -> dict[str, str]:  # fmt: skip
        """A document for the instance, signed by the key this control plane trusts."""
        document = IdentitySigner.document(instance_id or new_instance_id(), region, account)
        return {"document": document, "signature": self.signer.sign(document)}

    def register_reply(
        self,
        instance_id: str | None = None,
        region: str = "eu-central-1",
        public_ip: str = "203.0.113.10",
        *,
        public_key: str | None = None,
        credential: str | None = None,
        identity: dict[str, str] | None = None,
        token: str | None = None,
    ) -> httpx.Response:
        body = {
            "identity": identity or self.identity(instance_id, region),
            "public_ip": public_ip,
            "public_key": public_key or wg_key(),
            "listen_port": 51820,
            "agent_version": "test",
        }
        headers = {"Authorization": f"Bearer {token or self.tokens['node']}"}
        if credential:
            headers["X-Node-Credential"] = credential
        with httpx.Client(base_url=self.url, verify=self.verify, timeout=10) as http:
            return http.post("/v1/nodes", json=body, headers=headers)

    def register(
        self,
        instance_id: str | None = None,
        region: str = "eu-central-1",
        public_ip: str = "203.0.113.10",
        **kw,
    ) -> str:
        """Register (a bound instance again: with its credential); return the node id."""
        instance_id = instance_id or new_instance_id()
        known = next((n for n, i in self.instances.items() if i == instance_id), None)
        kw.setdefault("credential", self.credentials.get(known) if known else None)
        reply = self.register_reply(instance_id, region, public_ip, **kw)
        assert reply.status_code == 201, reply.text
        node_id = reply.json()["node_id"]
        self.credentials[node_id] = reply.json()["node_credential"]
        self.instances[node_id] = instance_id
        return node_id

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
        with self.client(node_id) as node:
            reply = node.post(f"/v1/nodes/{node_id}/heartbeat", json=body)
        assert reply.status_code == 200, reply.text
        return reply.json()


def start(
    tmp: Path,
    *extra: str,
    tls: bool = False,
    port: int | None = None,
    tokens: dict[str, str] | None = None,
    open_files: tuple[int, int] | None = None,
    aws: tuple[str, ...] = ("--insecure-skip-aws-verify",),
    entry: tuple[str, ...] = ("-m", "idra.cli"),
    env: dict[str, str] | None = None,
    database: str | None = None,
) -> ControlPlane:
    """Start (or, with the same ``tmp``, ``port`` and ``tokens``, restart) the server.
    Every test starts it here, so its flags are in one place. ``open_files``: its
    RLIMIT_NOFILE (soft, hard); ``aws``: how it checks instances with AWS (as documented,
    the tests say it out loud); ``entry``: what the interpreter runs
    (``tests/controlplane/moto_serve.py``: with moto); ``database``: its URL (default:
    :func:`database_url` of ``tmp``)."""
    kinds = ("node", "operator", "client", "metrics")
    tokens = tokens or {kind: secrets.token_urlsafe(24) for kind in kinds}
    key_file = tmp / "iid.key"
    signer = IdentitySigner.load(key_file) if key_file.exists() else IdentitySigner()
    signer.write_key(key_file)
    args = ["--iid-cert-file", str(signer.write_cert(tmp / "iid.pem"))]
    args += ["--aws-account", LAB_ACCOUNT, *aws]
    for prefix in TEST_RANGES:
        args += ["--allow-public-ip-range", prefix]
    for kind, token in tokens.items():
        args += [f"--{kind}-token-file", str(write_token(tmp / f"{kind}.token", token))]
    verify: ssl.SSLContext | bool = True
    if tls:
        ca, cert, key = make_ca_and_server(tmp / "pki", ["127.0.0.1"])
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        verify = ssl.create_default_context(cafile=ca)
    port = port or free_port()
    database = database or database_url(tmp)
    log = tmp / "controlplane.log"
    process = subprocess.Popen(
        [
            sys.executable,
            *entry,
            "controlplane",
            "serve",
            "--database-url",
            database,
            "--listen",
            f"127.0.0.1:{port}",
            *args,
            *extra,
        ],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, open_files))
        if open_files
        else None,
        env=None if env is None else os.environ | env,
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
    sqlite = parse_url(database).get_backend_name() == "sqlite"
    return ControlPlane(
        f"{scheme}://127.0.0.1:{port}", tokens, process, log, verify, signer,
        Path(parse_url(database).database) if sqlite else None, database,
    )  # fmt: skip


@pytest.fixture
def cp(tmp_path):
    server = start(tmp_path, "--keep-changes", "50")
    yield server
    server.process.terminate()
    server.process.wait(10)


def module_server(*extra: str, doc: str = "One server for the module (started by start())."):
    """A module-scoped fixture: one server, started through :func:`start` with ``extra``,
    shared by every test of the module (each test looks only at its own nodes) and
    stopped after it. It depends on ``backend``, so in this folder each store gets its
    own server. Use it as ``cp = module_server()`` at a test module's top level."""

    def server(tmp_path_factory, backend):  # outside this folder: tests/conftest.py
        running = start(tmp_path_factory.mktemp("cp"), *extra)
        yield running
        running.process.terminate()
        running.process.wait(10)

    server.__doc__ = doc
    return pytest.fixture(scope="module")(server)


def dump(url: str) -> str:
    """Every row of every table as text (for "this secret is stored nowhere")."""
    engine = sa.create_engine(parse_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            rows = [
                repr(tuple(row))
                for table in tables
                for row in conn.execute(sa.text(f"SELECT * FROM {table}"))  # noqa: S608
            ]
    finally:
        engine.dispose()
    return "\n".join(rows)
