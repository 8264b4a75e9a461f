"""node-daemon acceptance (issue 5) with real wireguard-go, the real control plane, and
for the end-to-end scenario the built node-daemon.pyz."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.controlplane.conftest import free_port, start, wg_key

from .conftest import INSTANCE_ID, Env, eventually

OUTAGE_S = float(os.environ.get("IDRA_TEST_OUTAGE_S", "10"))


def _nodes(env: Env, state: str | None = None) -> list[dict]:
    with env.cp.client("operator") as ops:
        return ops.get("/v1/nodes", params={"state": state} if state else {}).json()["nodes"]


def _received(env: Env, key: str) -> int:
    """Bytes the node's interface has received from the peer ``key``."""
    return int(env.dump()[key][3])


def test_restart_keeps_key_registration_and_sessions(env: Env, pyz: Path) -> None:
    """Runs the BUILT node-daemon.pyz: register, serve a client, restart without loss."""
    assert pyz.stat().st_size <= 25 * 1024 * 1024
    env.start_agent(pyz)
    client = env.add_client()
    assert env.ping(client) == 3
    public_key = env.node.run("wg", "show", env.wg, "public-key").stdout
    node_id = _nodes(env)[0]["id"]
    received = _received(env, client.public_key)
    ping = subprocess.Popen(
        client.ns.exec_args("ping", "-n", "-q", "-c", "150", "-i", "0.02", "10.96.0.1"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        eventually(lambda: _received(env, client.public_key) > received, what="ping running")
        env.stop_agent(kill=True)
        env.start_agent(pyz)
        out, _ = ping.communicate(timeout=30)
    finally:
        ping.kill()
        ping.wait()
    assert " 150 received" in out, out
    assert env.node.run("wg", "show", env.wg, "public-key").stdout == public_key
    nodes = _nodes(env)
    assert [n["id"] for n in nodes] == [node_id], "same instance, same credential, same node"
    assert nodes[0]["instance_id"] == INSTANCE_ID, "from the signed document"
    assert "reusing the interface key" in env.log.read_text()


def test_one_new_peer_among_a_thousand_changes_only_it(env: Env) -> None:
    env.start_agent()
    client = env.add_client()
    assert env.ping(client) == 3
    with env.cp.client("client") as api:
        for _ in range(999):
            assert api.post("/v1/peers", json={"public_key": wg_key()}).status_code == 200
    eventually(lambda: env.metric("idra_agent_peers") == 1000, what="1000 peers applied")
    before = env.dump()
    added = env.metric("idra_agent_peer_changes_total", 'change="added"')
    newcomer = wg_key()
    with env.cp.client("client") as api:
        api.post("/v1/peers", json={"public_key": newcomer})
    eventually(lambda: env.metric("idra_agent_peers") == 1001, what="the new peer")
    after = env.dump()
    assert set(after) - set(before) == {newcomer}
    assert env.metric("idra_agent_peer_changes_total", 'change="added"') == added + 1
    for key, fields in before.items():
        endpoint, allowed, handshake, rx, tx = fields
        assert after[key][:3] == [endpoint, allowed, handshake], "peer untouched"
        assert int(after[key][3]) >= int(rx) and int(after[key][4]) >= int(tx), "counters kept"
    assert before[client.public_key][2] != "0", "the live client had a session"

    with env.cp.client("client") as api:
        assert api.delete(f"/v1/peers/{newcomer}").status_code == 204
    eventually(lambda: newcomer not in env.dump(), what="the removal")
    assert env.metric("idra_agent_peer_changes_total", 'change="removed"') == 1

    def exchanged() -> tuple[float, float]:
        cycles = env.metric("idra_agent_heartbeats_total")
        sent = env.metric("idra_agent_api_bytes_total", 'direction="sent"')
        return cycles, sent + env.metric("idra_agent_api_bytes_total", 'direction="received"')

    cycles, total = exchanged()
    eventually(lambda: env.metric("idra_agent_heartbeats_total") >= cycles + 3, what="3 cycles")
    cycles2, total2 = exchanged()
    assert cycles2 - cycles >= 3
    per_cycle = (total2 - total) / (cycles2 - cycles)
    assert per_cycle < 1024, f"an idle cycle moved {per_cycle:.0f} bytes with 1000 peers"


def test_bad_peers_rejected_one_by_one(env: Env, tmp_path: Path) -> None:
    good = [wg_key() for _ in range(3)]
    twice = wg_key()
    document = {
        "version": 1,
        "full": True,
        "removed": [],
        "peers": [
            {"public_key": good[0], "allowed_ips": ["10.96.0.10/32", "fd49:4452:4100::10/128"]},
            {"public_key": good[1], "allowed_ips": ["10.96.0.11/32"]},
            {"public_key": good[2], "allowed_ips": ["10.96.0.12/32"]},
            {"public_key": "not-a-key", "allowed_ips": ["10.96.0.13/32"]},
            {"public_key": base64.b64encode(b"x" * 31).decode(), "allowed_ips": ["10.96.0.14/32"]},
            {"public_key": wg_key(), "allowed_ips": ["0.0.0.0/0"]},
            {"public_key": wg_key(), "allowed_ips": ["10.0.0.1/32"]},
            {"public_key": wg_key(), "allowed_ips": ["10.96.0.0/24"]},
            {"public_key": twice, "allowed_ips": ["10.96.0.15/32"]},
            {"public_key": twice, "allowed_ips": ["10.96.0.16/32"]},
            {"public_key": wg_key(), "allowed_ips": ["10.96.0.10/32"]},
        ],
    }
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(document))
    result = env.node.run(
        sys.executable,
        "-m",
        "node_daemon",
        "sync",
        "--interface",
        env.wg,
        "--peers",
        str(path),
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout.strip() == "added 3 updated 0 removed 0 unchanged 0 rejected 8"
    for reason in (
        "bad public key",
        "duplicate public key",
        "allowed IP not a single host",
        "allowed IP outside the client pool",
        "allowed IP owned by another peer",
    ):
        assert reason in result.stderr
    assert set(env.dump()) == set(good)
    again = env.node.run(
        sys.executable,
        "-m",
        "node_daemon",
        "sync",
        "--interface",
        env.wg,
        "--peers",
        str(path),
        check=False,
    )
    assert again.stdout.startswith("added 0 updated 0 removed 0 unchanged 3")


def test_outage_keeps_peers_then_recovers(env: Env) -> None:
    """The control plane gone for OUTAGE_S seconds (``IDRA_TEST_OUTAGE_S``, 10 by
    default): peers kept, sessions unaffected, retries backed off. The bound comes from
    the agent's own timings, set here: without backoff it would retry every cycle
    (``interval``); with full jitter up to ``backoff_max`` it retries about once a second."""
    interval, backoff_max = 0.2, 2.0
    env.start_agent(None, "--heartbeat-interval", str(interval), "--backoff-max",
                    str(backoff_max))  # fmt: skip
    client = env.add_client()
    env.cp.process.terminate()
    env.cp.process.wait(10)
    stopped = time.monotonic()
    errors = env.metric("idra_agent_syncs_total", 'result="error"')
    eventually(
        lambda: env.metric("idra_agent_syncs_total", 'result="error"') >= errors + 2,
        what="retries during the outage",
    )
    while time.monotonic() - stopped < OUTAGE_S:
        assert client.public_key in env.dump(), "peers kept during the outage"
        time.sleep(1)
    assert env.ping(client) == 3, "sessions unaffected"
    retries = env.metric("idra_agent_syncs_total", 'result="error"') - errors
    outage = time.monotonic() - stopped
    without_backoff = outage / interval  # one retry a cycle
    assert retries < without_backoff / 2, f"{retries:.0f} retries in {outage:.0f} s"
    port = int(env.cp.url.rsplit(":", 1)[1])
    beats = env.metric("idra_agent_heartbeats_total")
    env.cp = start(env.tmp, port=port, tokens=env.cp.tokens)
    eventually(lambda: env.metric("idra_agent_heartbeats_total") > beats, what="a heartbeat")
    newcomer = wg_key()
    with env.cp.client("client") as api:
        assert api.post("/v1/peers", json={"public_key": newcomer}).status_code == 200
    eventually(lambda: newcomer in env.dump(), what="sync after recovery")
    assert "control_plane transport: POST heartbeat: ConnectError" in env.log.read_text()


def test_database_restored_and_token_rotated(env: Env) -> None:
    """The control plane comes back with an empty database and a rotated NODE_TOKEN:
    our credential is unknown (401), registering with the old token is refused too, so
    sync stops while the tunnel keeps serving; the new token lets it register afresh."""
    env.start_agent()
    client = env.add_client()
    env.cp.process.terminate()
    env.cp.process.wait(10)
    restored = env.tmp / "restored"  # empty database, same trusted identity key
    restored.mkdir()
    shutil.copy(env.tmp / "iid.key", restored / "iid.key")
    tokens = env.cp.tokens | {"node": "a-rotated-node-token-of-some-length"}
    env.cp = start(restored, port=int(env.cp.url.rsplit(":", 1)[1]), tokens=tokens)
    eventually(lambda: env.metric("idra_agent_unauthorized") == 1, what="the 401")
    assert client.public_key in env.dump() and env.ping(client) == 3, "still serving"
    assert "refuses our node credential: registering again" in env.log.read_text()
    assert "refuses our token" in env.log.read_text()
    (env.tmp / "node.token").write_text(tokens["node"])
    eventually(lambda: len(_nodes(env)) == 1, timeout=15, what="a fresh registration")
    assert _nodes(env)[0]["instance_id"] == INSTANCE_ID
    eventually(lambda: env.metric("idra_agent_unauthorized") == 0, what="sync resumed")


def test_no_instance_metadata_is_retried_not_fatal(env: Env) -> None:
    """Without a signed identity document there is nothing to register with, but an
    unreachable metadata service is a failing dependency (issue 14): counted, one line
    each, retried; the agent keeps running and registers nothing meanwhile."""
    url = f"http://127.0.0.1:{free_port()}"
    agent = env.start_agent(None, "--imds-url", url, wait=False)
    labels = 'dependency="imds",kind="transport"'
    eventually(lambda: env.metric("idra_agent_faults_total", labels) >= 2, what="retries")
    assert agent.poll() is None and _nodes(env) == []
    assert "imds transport" in env.log.read_text()


def test_lost_credential_is_refused_shown_and_replaced(env: Env) -> None:
    """A node that lost its credential (a reboot wipes the tmpfs) cannot take its
    instance's registration back: refused, visible in the fleet list, drained as
    identity_lost so the reaper replaces it; the agent keeps serving and says why."""
    env.start_agent()
    state = env.tmp / "state"
    credential = (state / "node.credential").read_text().strip()
    assert (state / "node.credential").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    env.stop_agent()
    (state / "node.credential").unlink()
    env.start_agent(wait=False)
    eventually(lambda: env.metric("idra_agent_syncs_total", 'result="refused"') > 0,
               what="the refusal")  # fmt: skip
    node = _nodes(env)[0]
    assert node["identity_refusals"] >= 1
    assert (node["state"], node["drain_reason"]) == ("draining", "identity_lost")
    assert "registration refused (HTTP 409" in env.log.read_text()
    for text in (env.log.read_text(), env.cp.log.read_text(), env.metrics()):
        assert credential not in text, "a credential is never logged"


def test_drain_reaches_the_agent_and_empties_the_pool(env: Env) -> None:
    env.start_agent()
    node_id = _nodes(env)[0]["id"]
    with env.cp.client("operator") as ops:
        assert ops.post("/node/drain", json={"id": node_id, "reason": "blocked"}).status_code == 202
    eventually(lambda: env.metric("idra_agent_draining") == 1, what="the drain flag")
    assert [n["id"] for n in _nodes(env, "draining")] == [node_id]
    with env.cp.client("client") as api:
        assert api.post("/v1/peers", json={"public_key": wg_key()}).status_code == 503
    assert "drain requested (blocked)" in env.log.read_text()


def test_logs_and_metrics_hold_no_peer_identifiers(env: Env) -> None:
    env.start_agent()
    clients = [env.add_client() for _ in range(2)]
    for client in clients:
        env.ping(client)
    with env.cp.client("client") as api:
        api.delete(f"/v1/peers/{clients[0].public_key}")
    eventually(lambda: "1 removed" in env.log.read_text(), what="the removal logged")
    beats = env.metric("idra_agent_heartbeats_total")
    eventually(lambda: env.metric("idra_agent_heartbeats_total") >= beats + 2, what="2 cycles")
    captured = env.metrics() + env.log.read_text() + env.cp.log.read_text()
    assert "idra_agent_peers" in captured
    for client in clients:
        assert client.public_key not in captured
        assert client.address.split("/")[0] not in captured
        assert "198.18." not in captured, "no client endpoint"


def test_fetch_secret_writes_0600_and_never_prints(tmp_path: Path, monkeypatch) -> None:
    import boto3
    from click.testing import CliRunner
    from moto import mock_aws

    from node_daemon.cli import main

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    value = "tok-" + os.urandom(12).hex()
    out = tmp_path / "run" / "token"
    with mock_aws():
        boto3.client("secretsmanager", region_name="eu-central-1").create_secret(
            Name="idra/staging/NODE_TOKEN", SecretString=value
        )
        runner = CliRunner()
        ok = runner.invoke(
            main,
            [
                "fetch-secret",
                "--secret-id",
                "idra/staging/NODE_TOKEN",
                "--region",
                "eu-central-1",
                "--out",
                str(out),
            ],
        )
        missing = runner.invoke(
            main,
            [
                "fetch-secret",
                "--secret-id",
                "idra/staging/NOPE",
                "--region",
                "eu-central-1",
                "--out",
                str(tmp_path / "x"),
                "--attempts",
                "1",
            ],
        )
    assert ok.exit_code == 0, ok.output
    assert out.read_text() == value
    assert out.stat().st_mode & 0o777 == 0o600
    assert value not in ok.output
    assert missing.exit_code == 1
    assert "ResourceNotFoundException" in missing.output and "idra/staging/NOPE" in missing.output
    assert not (tmp_path / "x").exists()


def test_build_is_reproducible(pyz: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, str(repo / "agent" / "build.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "node-daemon.pyz").read_bytes() == pyz.read_bytes()
    digest = (tmp_path / "node-daemon.pyz.sha256").read_text().split()
    assert digest[1] == "node-daemon.pyz" and len(digest[0]) == 64
