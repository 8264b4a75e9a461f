"""The lab end to end (issue 7): up with 2 nodes and 3 clients, an agent killed under
supervision, the whole demo with real traffic (its drains and replacements made by the
lab's running lifecycle service, ``idra ops run --fleet lab``), a privacy sweep of every
log (the loop's too) and metric, then down with nothing left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idra.lab import state as S
from idra.netns import WG_RUN_DIR, Netns, is_running, netns_names, run

IDRA = [sys.executable, "-m", "idra.cli", "lab"]


def _lab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = os.environ | {"COLUMNS": "400"}  # tables unwrapped, one row a line
    return subprocess.run([*IDRA, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def lab(lab_dir):
    up = _lab("up", "--nodes", "2", "--clients", "3")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield json.loads((lab_dir / "state.json").read_text())
    finally:
        _lab("down")


def _children(pid: int) -> list[int]:
    return [int(p) for p in run(["pgrep", "-P", str(pid)], check=False).stdout.split()]


def test_killed_agent_is_restarted_and_sessions_survive(lab) -> None:
    node = lab["nodes"][0]
    client = next(c for c in lab["clients"] if c["node_id"] == node["node_id"])
    supervisor = node["supervisor_pid"]
    (agent,) = _children(supervisor)
    ping = subprocess.Popen(
        Netns(client["ns"]).exec_args("ping", "-n", "-q", "-c", "60", "-i", "0.1", S.PUBLIC_V4),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)
        run(["kill", "-9", str(agent)])
        out, _ = ping.communicate(timeout=30)
    finally:
        ping.kill()
        ping.wait()
    received = int(re.search(r"(\d+) received", out).group(1))
    assert received >= 59, f"{received}/60 pings: a session was disturbed"
    deadline = time.monotonic() + 20
    while not (restarted := _children(supervisor)) or restarted == [agent]:
        assert time.monotonic() < deadline, "the supervisor did not restart the agent"
        time.sleep(0.2)


def test_nodes_registered_with_their_signed_identity(lab) -> None:
    """Each node's IMDSv2 stand-in (in its own namespace, token required) serves its
    identity document; the control plane knows each node by that instance id and trusts
    only the lab's identity certificate."""
    for node in lab["nodes"]:
        host = Netns(node["ns"])
        metadata = f"http://{S.METADATA_V4}/latest/dynamic/instance-identity/document"
        assert host.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", metadata,
                        check=False).stdout == "401", "IMDSv2: no token, no answer"  # fmt: skip
        token = host.run("curl", "-s", "-X", "PUT", f"http://{S.METADATA_V4}/latest/api/token",
                         "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60").stdout  # fmt: skip
        document = host.run("curl", "-s", "-H", f"X-aws-ec2-metadata-token: {token}",
                            metadata).stdout  # fmt: skip
        assert json.loads(document)["instanceId"] == node["instance_id"]
    listing = subprocess.run(
        [sys.executable, "-c", "import json, sys\n"
         "from idra.lab import world\nfrom idra.lab.state import LabState\n"
         "world.enter_ops()\n"
         "with world.api_client(LabState.load(), 'operator') as ops:\n"
         "    print(json.dumps(ops.get('/v1/nodes').json()['nodes']))"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    registered = {n["id"]: n["instance_id"] for n in json.loads(listing)}
    assert registered == {n["node_id"]: n["instance_id"] for n in lab["nodes"]}
    cp = next(p for p in lab["processes"] if p["role"] == "controlplane")
    args = Path(f"/proc/{cp['pid']}/cmdline").read_bytes().split(b"\0")
    trusted = [args[i + 1].decode() for i, a in enumerate(args) if a == b"--iid-cert-file"]
    assert trusted == [f"{lab['region']}={S.LAB_DIR / 'pki' / 'iid.pem'}"], "the lab key only"
    assert (S.LAB_DIR / "pki" / "iid.pem").read_text().count("BEGIN CERTIFICATE") == 1


def test_demo_holds_every_step(lab) -> None:
    demo = _lab("demo", "--keep")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.count("held") == 6
    assert "9/9 attacks refused" in demo.stdout and "CHANGED" not in demo.stdout
    assert demo.stdout.count("replaced by its reaper: True") == 2, "the ops loop acted twice"
    latency = re.search(r"first ping answered in ([0-9.]+) s", demo.stdout)
    assert latency and float(latency.group(1)) < 2, "the newcomer connects at once"


def test_no_client_key_or_address_in_logs_or_metrics(lab) -> None:
    state = json.loads((S.LAB_DIR / "state.json").read_text())
    captured = "".join(p.read_text(errors="replace") for p in (S.LAB_DIR / "logs").glob("*.log"))
    for node in state["nodes"]:
        captured += Netns(node["ns"]).run("curl", "-s", "127.0.0.1:9586/metrics").stdout
    assert "idra_agent_peers" in captured and "registered" in captured, "logs were captured"
    assert "ops canary pass: " in captured and "ops reaper pass: " in captured, "the ops loop's"
    secrets = [c["public_key"] for c in state["clients"]]
    secrets += [c[k] for c in state["clients"] for k in ("address_v4", "address_v6")]
    secrets += [f"203.0.113.{100 + c['index']}" for c in state["clients"]]  # their own IPs
    leaked = [s for s in secrets if s and s in captured]
    assert not leaked, f"{len(leaked)} client identifiers in lab logs or metrics"


def test_down_leaves_nothing(lab) -> None:
    state = json.loads((S.LAB_DIR / "state.json").read_text())
    pids = [p["pid"] for p in state["processes"]]
    assert _lab("down").returncode == 0
    assert not [n for n in netns_names() if n.startswith(S.NS_PREFIX)]
    assert not list(WG_RUN_DIR.glob(f"{S.WG_PREFIX}*")) if WG_RUN_DIR.exists() else True
    assert not S.LAB_DIR.exists()
    alive = [pid for pid in pids if is_running(pid)]
    assert not alive, f"processes left: {alive}"
    assert str(S.LAB_DIR) not in run(["ps", "-eo", "args"]).stdout, "a lab process is left"
