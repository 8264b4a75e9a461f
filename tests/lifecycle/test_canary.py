"""``idra canary`` against the real control plane and a real DNS blocklist on loopback:
only a listing drains, and only on the second consecutive run; errors never drain."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.controlplane.conftest import ControlPlane, start

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


def _canary(cp: ControlPlane, dns: str, state, *extra: str) -> tuple[int, dict]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "idra.cli",
            "canary",
            "--api-url",
            cp.url,
            "--operator-token-file",
            str(state.parent / "operator.token"),
            "--dnsbl",
            ZONE,
            "--nameserver",
            dns,
            "--state-file",
            str(state),
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
