"""``idra canary`` against the real control plane and a real DNS blocklist on loopback:
only a listing drains, and only on the second consecutive run; errors never drain."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from idra.lifecycle.canary import run_once
from idra.lifecycle.dnsbl import Check, Verdict
from tests.controlplane.conftest import ControlPlane, free_port, start

from .dns_server import start as start_dns

ZONE = "zen.test.example"


@pytest.fixture
def world(tmp_path):
    cp = start(tmp_path)
    dns, behaviours, _, address = start_dns(ZONE)
    yield cp, behaviours, address, tmp_path
    dns.stop()
    cp.process.terminate()
    cp.process.wait(10)


def _node(cp: ControlPlane, ip: str) -> str:
    return cp.register(f"i-{ip.replace('.', '')}", public_ip=ip)


def _canary(cp: ControlPlane, dns: str, state: Path | None, *extra: str) -> tuple[int, dict]:
    """``idra canary`` once; ``state``: its --state-file (None: the control plane keeps
    the confirmations)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "idra.cli",
            "canary",
            "--api-url",
            cp.url,
            "--operator-token-file",
            str(cp.log.parent / "operator.token"),
            "--dnsbl",
            ZONE,
            "--nameserver",
            dns,
            *(["--state-file", str(state)] if state else []),
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, {r["public_ip"]: r for r in json.loads(result.stdout or "[]")}


def _states(cp: ControlPlane) -> dict[str, str]:
    with cp.client("operator") as ops:
        return {n["public_ip"]: n["state"] for n in ops.get("/v1/nodes").json()["nodes"]}


def test_listing_drains_on_the_second_run_errors_never(world) -> None:
    cp, behaviours, dns, tmp = world
    listed, refused, slow, clean = "203.0.113.10", "203.0.113.11", "203.0.113.12", "203.0.113.13"
    for ip in (listed, refused, slow, clean):
        _node(cp, ip)
    behaviours.update({listed: "listed", refused: "refused", slow: "timeout"})
    state = tmp / "canary.json"

    code, first = _canary(cp, dns, state)
    assert code == 1, "errors (refused, timeout) make the run exit 1"
    assert first[listed]["verdict"] == "listed" and first[listed]["confirmations"] == 1
    assert first[refused]["verdict"] == first[slow]["verdict"] == "error"
    assert first[clean]["verdict"] == "clean"
    assert set(_states(cp).values()) == {"active"}, "one run never drains"

    _, second = _canary(cp, dns, state)
    assert second[listed]["drained"]
    states = _states(cp)
    assert states[listed] == "draining"
    assert states[refused] == states[slow] == states[clean] == "active"

    for _ in range(2):
        _, later = _canary(cp, dns, state)
    assert listed not in later, "drained nodes are no longer checked"
    assert not any(r["drained"] for r in later.values())


def test_without_a_state_file_the_control_plane_keeps_the_count(world) -> None:
    """The default: the confirmations live in the control plane (``/v1/ops/canary``,
    shared with ``idra ops run``), so two separate runs drain."""
    cp, behaviours, dns, _ = world
    ip = "203.0.113.30"
    node = _node(cp, ip)
    behaviours[ip] = "listed"
    assert _canary(cp, dns, None)[1][ip]["confirmations"] == 1
    with cp.client("operator") as ops:
        assert ops.get("/v1/ops/canary").json() == {"listed_runs": {node: 1}}
    assert _canary(cp, dns, None)[1][ip]["drained"]
    assert _states(cp)[ip] == "draining"


def test_a_clean_run_clears_the_count(world) -> None:
    cp, behaviours, dns, tmp = world
    ip = "203.0.113.20"
    _node(cp, ip)
    state = tmp / "canary.json"
    behaviours[ip] = "listed"
    assert _canary(cp, dns, state)[1][ip]["confirmations"] == 1
    behaviours.pop(ip)
    assert _canary(cp, dns, state)[1][ip]["confirmations"] == 0
    behaviours[ip] = "listed"
    _, run = _canary(cp, dns, state)
    assert run[ip]["confirmations"] == 1 and not run[ip]["drained"]


def test_bad_usage_exits_2(world, tmp_path) -> None:
    cp, _, dns, tmp = world
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "idra.cli",
            "canary",
            "--api-url",
            "http://198.51.100.1/",
            "--operator-token-file",
            str(tmp / "operator.token"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "https" in result.stderr
    (tmp_path / "probes.yaml").write_text("targets: [{name: x}]")
    code, _ = _canary(cp, dns, tmp / "s.json", "--probes", str(tmp_path / "probes.yaml"))
    assert code == 2


def test_checks_run_concurrently_and_bounded() -> None:
    """Four checks meet at a barrier (they must run at once); never more than four run."""
    barrier, lock = threading.Barrier(4, timeout=10), threading.Lock()
    running, peak = 0, 0

    def checks(node: dict) -> list[Check]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        barrier.wait()
        with lock:
            running -= 1
        return [Check("zone", Verdict.CLEAN)]

    nodes = [{"id": f"node-{n}", "public_ip": f"203.0.113.{n}"} for n in range(12)]
    seen: list[str] = []
    reports, _ = run_once(nodes, checks, lambda _: None, {}, workers=4,
                          progress=lambda node, _: seen.append(node["id"]))  # fmt: skip
    assert peak == 4
    assert [r.node_id for r in reports] == [n["id"] for n in nodes], "reports keep node order"
    assert sorted(seen) == sorted(n["id"] for n in nodes)


def test_a_crashing_check_is_an_error_and_a_failed_drain_is_retried() -> None:
    nodes = [{"id": "node-a", "public_ip": "203.0.113.1"}, {"id": "node-b", "public_ip": "x"}]

    def checks(node: dict) -> list[Check]:
        if node["id"] == "node-b":
            raise RuntimeError("boom")
        return [Check("zone", Verdict.LISTED)]

    def drain(node_id: str) -> None:
        raise RuntimeError("control plane down")

    reports, state = run_once(nodes, checks, drain, {"node-a": 1})
    assert reports[1].verdict is Verdict.ERROR
    assert not reports[0].drained and "control plane down" in reports[0].drain_error
    assert state == {"node-a": 2}, "the next run drains it"


def test_every_survives_a_control_plane_outage(tmp_path) -> None:
    """The control plane is down for the first passes, then comes up: the loop goes on."""
    tokens = {kind: f"{kind}-token-0123456789abcdef" for kind in ("node", "operator", "client")}
    (tmp_path / "operator.token").write_text(tokens["operator"])
    port = free_port()
    dns, _, _, address = start_dns(ZONE)
    canary = subprocess.Popen(
        [sys.executable, "-m", "idra.cli", "canary", "--api-url", f"http://127.0.0.1:{port}",
         "--operator-token-file", str(tmp_path / "operator.token"), "--dnsbl", ZONE,
         "--nameserver", address, "--every", "1", "--runs", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = canary.stderr.readline()
        assert "canary pass failed" in first and "ConnectError" in first
        cp = start(tmp_path, port=port, tokens=tokens)
        cp.register("i-outage", public_ip="203.0.113.99")
        out, err = canary.communicate(timeout=60)
    finally:
        canary.kill()
        dns.stop()
        if "cp" in locals():
            cp.process.terminate()
            cp.process.wait(10)
    assert canary.returncode == 1, "a failed pass is reported in the exit code"
    assert "Traceback" not in err
    assert "203.0.113.99" in out, "later passes checked the node"
    assert "checked 1/1 node-" in err, "plain progress lines off a terminal"


def test_progress_bar_on_a_terminal(world) -> None:
    cp, _, dns, tmp = world
    for n in range(3):
        _node(cp, f"203.0.113.{40 + n}")
    master, terminal = pty.openpty()
    canary = subprocess.Popen(
        [sys.executable, "-m", "idra.cli", "canary", "--api-url", cp.url, "--operator-token-file",
         str(tmp / "operator.token"), "--dnsbl", ZONE, "--nameserver", dns, "--json"],
        stdout=subprocess.PIPE, stderr=terminal, env=os.environ | {"TERM": "xterm"},
    )  # fmt: skip
    os.close(terminal)
    try:
        out, _ = canary.communicate(timeout=60)
        shown = b""
        while select.select([master], [], [], 1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        canary.kill()
        canary.wait()
        os.close(master)
    assert canary.returncode == 0 and len(json.loads(out)) == 3
    assert b"checking nodes" in shown and b"100%" in shown
    assert b"checked 1/" not in shown, "no plain progress lines on a terminal"
