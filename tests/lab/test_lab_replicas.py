"""``idra lab up --replicas 2`` (issue 24): two control planes on the lab's PostgreSQL
behind HAProxy, one URL for everyone; one replica killed, the node keeps heartbeating and
the client's tunnel keeps working through the other; ``down`` leaves no database behind."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from idra.lab import state as S
from idra.netns import Netns, is_running, run
from tests.lab.test_lab_e2e import _lab


@pytest.fixture(scope="module")
def lab(lab_dir):
    up = _lab("up", "--nodes", "1", "--clients", "1", "--replicas", "2")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "2 replicas on PostgreSQL behind HAProxy" in up.stdout
        yield json.loads((lab_dir / "state.json").read_text())
    finally:
        _lab("down")


def _get(path: str, port: int = S.CP_PORT, token: str | None = None) -> dict:
    """A request from the control plane's namespace (the lab CA verifies the replica);
    the token goes in a header file, never on a command line."""
    header = ""
    if token:
        headers = S.LAB_DIR / "test-headers"
        headers.touch(mode=0o600)
        headers.write_text(f"Authorization: Bearer {token}\n")
        header = f"-H @{headers}"
    url = f"https://{S.CP_V4}:{port}{path}"
    cmd = f"curl -sS --cacert {S.LAB_DIR / 'pki' / 'ca.pem'} {header} {url}"
    return json.loads(Netns(S.NS_PREFIX + "cp").run("sh", "-c", cmd).stdout)


def test_both_replicas_listen_and_one_url_survives_a_killed_replica(lab) -> None:
    for port in (S.CP_PORT + 1, S.CP_PORT + 2, S.CP_PORT):
        assert _get("/healthz", port) == {"status": "ok", "database": "ok", "listener": "ok"}
    replica = next(p for p in lab["processes"] if p["role"] == "controlplane1")
    run(["kill", "-9", str(replica["pid"])])
    token = (S.LAB_DIR / "operator-token").read_text()
    before = _get("/v1/nodes", token=token)["nodes"][0]["last_heartbeat_at"]
    deadline = time.monotonic() + 10  # the lab's heartbeat is 2 s
    while _get("/v1/nodes", token=token)["nodes"][0]["last_heartbeat_at"] == before:
        assert time.monotonic() < deadline, "the node stopped heartbeating"
        time.sleep(0.5)
    client = lab["clients"][0]
    ping = Netns(client["ns"]).run("ping", "-n", "-c", "3", "-W", "2", S.PUBLIC_V4, check=False)
    assert ping.returncode == 0, ping.stdout


def test_down_removes_the_database(lab) -> None:
    folder = Path(lab["postgres"])
    pid = int((folder / "data" / "postmaster.pid").read_text().split()[0])
    assert _lab("down").returncode == 0
    assert not folder.exists() and not is_running(pid)
