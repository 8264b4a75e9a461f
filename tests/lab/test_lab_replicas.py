"""``idra lab up --replicas 2`` (issue 24): two control planes on the lab's PostgreSQL
behind HAProxy, one URL for everyone; one replica killed, the node keeps heartbeating
(seen through ``idra nodes list`` on the same URL) and the client's tunnel keeps working;
``down`` leaves no database behind."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from idra.lab import state as S
from idra.netns import Netns, is_running, run
from tests.lab.test_canary_tunnels import _nodes
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


def _healthz(port: int) -> dict:
    """``GET /healthz`` from the control plane's namespace (the lab CA verifies it)."""
    url = f"https://{S.CP_V4}:{port}/healthz"
    ca = S.LAB_DIR / "pki" / "ca.pem"
    return json.loads(Netns(S.NS_PREFIX + "cp").run("curl", "-sS", "--cacert", str(ca), url).stdout)


def _heard() -> float:
    """The node's last heartbeat, as ``idra nodes list`` reads it through the one URL."""
    (node,) = _nodes()
    return node["last_heartbeat_at"]


def test_both_replicas_listen_and_one_url_survives_a_killed_replica(lab) -> None:
    for port in (S.CP_PORT + 1, S.CP_PORT + 2, S.CP_PORT):
        assert _healthz(port) == {"status": "ok", "database": "ok", "listener": "ok"}
    replica = next(p for p in lab["processes"] if p["role"] == "controlplane1")
    run(["kill", "-9", str(replica["pid"])])
    before = _heard()
    deadline = time.monotonic() + 10  # the lab's heartbeat is 2 s
    while _heard() == before:
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
