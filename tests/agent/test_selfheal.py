"""Self-healing against the real control plane (issue 14): its database restored from
an older copy (the agent's version is ahead: a full resync, the live client keeps every
ping), then deleted (our node unknown: the agent registers again with the same key)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.controlplane.conftest import start, wg_key

from .conftest import Env, eventually


def _restart(env: Env, before=None) -> None:
    """Stop the control plane, let ``before`` touch its files, start it again."""
    port = int(env.cp.url.rsplit(":", 1)[1])
    env.cp.process.terminate()
    env.cp.process.wait(10)
    if before:
        before()
    env.cp = start(env.tmp, port=port, tokens=env.cp.tokens)


def _db_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("cp.db*"))


def test_database_restored_then_deleted(env: Env, pyz: Path) -> None:
    env.start_agent(pyz)
    client = env.add_client()
    assert env.ping(client) == 3
    node_key = env.node.run("wg", "show", env.wg, "public-key").stdout.strip()
    old = env.tmp / "old"
    old.mkdir()
    _restart(env, lambda: [shutil.copy(f, old / f.name) for f in _db_files(env.tmp)])

    newcomer = wg_key()
    with env.cp.client("client") as api:
        assert api.post("/v1/peers", json={"public_key": newcomer}).status_code == 200
    eventually(lambda: newcomer in env.dump(), what="the newcomer")

    ping = subprocess.Popen(
        client.ns.exec_args("ping", "-n", "-q", "-c", "100", "-i", "0.05", "10.96.0.1"),
        stdout=subprocess.PIPE,
        text=True,
    )

    def restore() -> None:
        for f in _db_files(env.tmp):
            f.unlink()
        for f in _db_files(old):
            shutil.copy(f, env.tmp / f.name)

    try:
        _restart(env, restore)
        eventually(lambda: newcomer not in env.dump(), what="resync to the older copy")
        out, _ = ping.communicate(timeout=30)
    finally:
        ping.kill()
        ping.wait()
    assert " 100 received" in out, out
    assert client.public_key in env.dump()

    registrations = env.metric("idra_agent_registrations_total")
    _restart(env, lambda: [f.unlink() for f in _db_files(env.tmp)])
    eventually(
        lambda: env.metric("idra_agent_registrations_total") > registrations,
        what="registered again after the database was deleted",
    )
    # the real control plane checks the credential first (401, then register again); a
    # control plane answering 404 for the node is covered by test_faults ("forget")
    unknown = [
        env.metric("idra_agent_faults_total", f'dependency="control_plane",kind="{kind}"')
        for kind in ("not_found", "credential_refused")
    ]
    assert any(unknown)
    with env.cp.client("operator") as ops:
        nodes = ops.get("/v1/nodes").json()["nodes"]
    assert len(nodes) == 1
    assert env.node.run("wg", "show", env.wg, "public-key").stdout.strip() == node_key
    eventually(lambda: client.public_key not in env.dump(), what="the empty database's peers")
    with env.cp.client("client") as api:  # the client app asks again
        assert api.post("/v1/peers", json={"public_key": client.public_key}).status_code == 200
    eventually(lambda: client.public_key in env.dump(), what="the client back")
    assert env.agent.poll() is None
