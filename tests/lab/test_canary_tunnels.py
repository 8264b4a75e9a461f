"""The canary probes through every node (issue 17), end to end in the lab's namespaces:
the real control plane, two lab nodes running the packaged agent, the lab's streaming
and "what is my IP" services, ``idra canary``, ``idra reap`` and the lab's lifecycle
service ``idra ops run --fleet lab`` as subprocesses in the ops namespace. No
--probe-source: the canary sets its own peer on each node and probes from a namespace
whose only way out is the tunnel. Needs root and the netns lock."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

import pytest

from idra.config import load_stack
from idra.lab import state as S
from idra.lab import world
from idra.lab.state import LabState
from idra.lifecycle.tunnel import NS_PREFIX, sweep
from idra.netns import Netns, netns_names, run

OPS = S.NS_PREFIX + "ops"


@pytest.fixture(scope="module")
def lab(lab_dir, pyz):
    state = LabState(stack="staging", region=load_stack("staging").regions[0], agent=str(pyz))
    try:
        state.save()
        world.build_world(state)
        cfg = load_stack("staging")
        world.start_control_plane(state, cfg)
        for _ in range(2):
            world.add_node(state, cfg, pyz)
        probes = S.LAB_DIR / "probes.yaml"
        probes.write_text(
            f"targets:\n  - name: streaming\n    url: http://{S.SVC_V4}:{S.STREAMING_PORT}/\n"
            "    blocked: {status: [403], body: '(?i)proxy detected'}\n"
        )
        _eventually(lambda: len(_nodes("active")) == 2, "both nodes registered")
        ids = {n["instance_id"]: n["id"] for n in _nodes()}
        for node in state.nodes:
            node.node_id = ids[node.instance_id]
        state.save()
        yield state
    finally:
        world.teardown(LabState.load())


def _in_ops(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(Netns(OPS).exec_args(sys.executable, "-m", "idra.cli", *args),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _connection() -> list[str]:
    token, ca = S.LAB_DIR / "operator-token", S.LAB_DIR / "pki/ca.pem"
    return ["--api-url", f"https://{S.CP_V4}:{S.CP_PORT}", "--operator-token-file", str(token),
            "--ca-file", str(ca)]  # fmt: skip


def _canary(*extra: str) -> tuple[int, dict[str, dict], str]:
    result = _in_ops(
        "canary", *_connection(), "--nameserver", f"{S.SVC_V4}:53", "--json",
        "--state-file", str(S.LAB_DIR / "canary" / "state.json"),
        "--probes", str(S.LAB_DIR / "probes.yaml"),
        "--whoami-url", f"http://{S.PUBLIC_V4}:{S.WEB_PORT}/", *extra,
    )  # fmt: skip
    reports = {r["node_id"]: r for r in json.loads(result.stdout or "[]")}
    return result.returncode, reports, result.stderr


def _nodes(state: str | None = None) -> list[dict]:
    args = ["nodes", "list", *_connection(), "--json"] + (["--state", state] if state else [])
    result = _in_ops(*args, timeout=30)
    return json.loads(result.stdout) if result.returncode == 0 else []


def _checks(report: dict) -> dict[str, str]:
    return {c["name"]: c["verdict"] for c in report["checks"]}


def _eventually(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.3)


def _canary_public_key() -> str:
    private = (S.LAB_DIR / "canary" / "canary.key").read_text()
    return run(["wg", "pubkey"], input=private).stdout.strip()


def _peers_on(node) -> str:
    return Netns(node.ns).run("wg", "show", node.wg, "dump").stdout


def test_a_target_blocking_nobody_drains_nobody(lab) -> None:
    for _ in range(2):
        code, reports, err = _canary()
        assert code == 0, err
        assert set(reports) == {n.node_id for n in lab.nodes}
        for report in reports.values():
            assert report["verdict"] == "clean" and not report["drained"]
            assert _checks(report) == {S.DNSBL_ZONE: "clean", "tunnel": "clean",
                                       "egress": "clean", "streaming": "clean"}  # fmt: skip
    key = S.LAB_DIR / "canary" / "canary.key"
    assert key.stat().st_mode & 0o777 == 0o600, "the canary's key: owner only"
    public = _canary_public_key()
    assert all(public in _peers_on(node) for node in lab.nodes), "its peer is on every node"
    assert key.read_text().strip() not in err + json.dumps(reports), "the key is never shown"
    assert not [n for n in netns_names() if n.startswith(NS_PREFIX)], "tunnels torn down"
    assert {n["state"] for n in _nodes()} == {"active"}


def test_a_node_whose_tunnel_cannot_come_up_is_an_error_not_drained(lab) -> None:
    """Node 2's WireGuard port is unreachable from the canary host (its listing would
    be refused too): an error on every run, never a confirmation."""
    ops, broken = Netns(OPS), lab.nodes[1]
    (S.LAB_DIR / "refused.json").write_text(json.dumps({broken.public_v4: "refused"}))
    drop = f"ip daddr {broken.public_v4} udp dport 51820 drop"
    ops.run("nft", "-f", "-", input="table inet canarytest {\n chain out {\n  type filter "
            f"hook output priority 0; {drop}\n }}\n}}\n")  # fmt: skip
    try:
        for _ in range(2):
            code, reports, _ = _canary("--handshake-timeout", "2")
            assert code == 1, "an error makes the run exit 1"
            report = reports[broken.node_id]
            assert report["verdict"] == "error" and report["confirmations"] == 0
            assert _checks(report)["tunnel"] == "error" and "streaming" not in _checks(report)
            assert reports[lab.nodes[0].node_id]["verdict"] == "clean"
    finally:
        ops.run("nft", "delete", "table", "inet", "canarytest")
        (S.LAB_DIR / "refused.json").write_text("{}")
    assert {n["state"] for n in _nodes()} == {"active"}
    assert not [n for n in netns_names() if n.startswith(NS_PREFIX)], "torn down on failure"


def test_probe_source_still_overrides(lab) -> None:
    """--probe-source NODE=ADDRESS: that node is probed from ADDRESS, not a tunnel (here
    the ops host's own address, which the streaming service refuses)."""
    node = lab.nodes[1]
    (S.LAB_DIR / "refused.json").write_text(json.dumps({S.OPS_V4: "refused"}))
    try:
        _, reports, _ = _canary("--probe-source", f"{node.node_id}={S.OPS_V4}",
                                "--state-file", str(S.LAB_DIR / "override.json"))  # fmt: skip
    finally:
        (S.LAB_DIR / "refused.json").write_text("{}")
    assert _checks(reports[node.node_id]) == {S.DNSBL_ZONE: "clean", "streaming": "listed"}
    assert _checks(reports[lab.nodes[0].node_id])["streaming"] == "clean", "through its tunnel"


def test_a_target_blocking_node_1_drains_node_1_only_on_the_second_run(lab) -> None:
    victim, other = lab.nodes
    (S.LAB_DIR / "refused.json").write_text(json.dumps({victim.public_v4: "refused"}))
    try:
        _, first, _ = _canary()
        assert first[victim.node_id]["verdict"] == "listed"
        assert first[victim.node_id]["confirmations"] == 1 and not first[victim.node_id]["drained"]
        assert _checks(first[victim.node_id])["egress"] == "clean", "probed as the node"
        assert {n["state"] for n in _nodes()} == {"active"}, "one run never drains"
        _, second, _ = _canary()
    finally:
        (S.LAB_DIR / "refused.json").write_text("{}")
    assert second[victim.node_id]["drained"] and not second[other.node_id]["drained"]
    assert second[other.node_id]["verdict"] == "clean"
    states = {n["id"]: n["state"] for n in _nodes()}
    assert states == {victim.node_id: "draining", other.node_id: "active"}


def test_the_canary_peer_is_never_a_user_the_drained_node_is_reaped(lab) -> None:
    """Node 1 (drained) has only the canary's peer, with a fresh handshake: the control
    plane counts it as empty and the reaper replaces it; the canary then forgets it."""
    victim = lab.nodes[0]
    public = _canary_public_key()
    dump = [line.split("\t") for line in _peers_on(victim).splitlines()[1:]]
    assert [peer[0] for peer in dump] == [public], "the canary's is the only peer"
    assert int(dump[0][4]) > time.time() - 60, "and it handshook a moment ago"

    def drained() -> dict:
        return next(n for n in _nodes("draining") if n["id"] == victim.node_id)

    seen = int(dump[0][4]) + 2 * world.LAB_HEARTBEAT_S + 1  # scan, then heartbeat

    def heard() -> float:  # the CLI gives times as UTC ISO-8601
        return dt.datetime.fromisoformat(drained()["last_heartbeat_at"]).timestamp()

    _eventually(lambda: heard() > seen, "a heartbeat after a scan")
    assert drained()["peers"] == 1, "the canary's peer is on the node"
    assert drained()["active_peers"] == 0, "the canary's peer is not a user"
    reap = _in_ops("reap", *_connection(), "--fleet", "lab", "--json")
    assert reap.returncode == 0, reap.stdout + reap.stderr
    assert [(d["node_id"], d["action"]) for d in json.loads(reap.stdout)] == [
        (victim.node_id, "terminate")
    ]
    assert victim.node_id not in {n["id"] for n in _nodes()}
    _eventually(lambda: len(_nodes("active")) == 2, "the replacement registered", 60)
    code, reports, err = _canary()
    assert code == 0 and len(reports) == 2, err
    state = json.loads((S.LAB_DIR / "canary" / "state.json").read_text())
    assert victim.node_id not in state["canary_peers"], "the departed node is forgotten"
    assert set(state["canary_peers"]) == set(reports)


def _ops_run() -> str:
    """One tick of the lab's lifecycle service (as ``idra lab up`` runs it): its log."""
    command = world.ops_command(LabState.load())
    done = subprocess.run(world.in_ops(*command, "--ticks", "1"),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_the_ops_loop_probes_through_tunnels_drains_on_its_second_pass_and_replaces(
    lab,
) -> None:
    """``idra ops run --fleet lab --probes``: its canary pass probes through the tunnels
    as ``idra canary`` does; two loops one after the other (the second resumes the
    first's confirmation) drain the refused node, and the second's reaper replaces it."""
    victim, other = LabState.load().nodes
    (S.LAB_DIR / "refused.json").write_text(json.dumps({victim.public_v4: "refused"}))
    try:
        first = _ops_run()
        assert "(lab fleet: canary, reaper)" in first, "no rollout pass in the lab"
        assert "ops canary pass: 2 active, 1 listed (streaming 1), 0 errors, 0 drained" in first
        assert {n["state"] for n in _nodes()} == {"active"}, "one pass never drains"
        second = _ops_run()
    finally:
        (S.LAB_DIR / "refused.json").write_text("{}")
    assert "ops canary pass: 2 active, 1 listed (streaming 1), 0 errors, 1 drained" in second
    assert "ops reaper pass: 1 draining, 1 terminating, 0 failed or refused" in second
    _eventually(lambda: len(_nodes("active")) == 2, "the replacement registered", 60)
    left = {n["instance_id"] for n in _nodes()}  # node 3, the replacement, has no id here
    assert victim.instance_id not in left and other.instance_id in left
    assert victim.instance_id not in {n.instance_id for n in LabState.load().nodes}
    key = (S.LAB_DIR / "ops" / "canary.key").read_text().strip()
    assert key not in first + second, "the canary's key is never logged"
    assert not [n for n in netns_names() if n.startswith(NS_PREFIX)], "tunnels torn down"


def test_sweep_removes_only_the_namespaces_of_a_canary_that_is_gone() -> None:
    """A canary killed mid-probe leaves its namespace (and a process in it): the next
    canary removes both, and never a namespace of a canary still running."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    leftover, live = f"{NS_PREFIX}{gone.pid}-0badc0de", f"{NS_PREFIX}{os.getpid()}-0badc0de"
    for name in (leftover, live):
        run(["ip", "netns", "add", name])
    stuck = subprocess.Popen(Netns(leftover).exec_args("sleep", "600"))
    try:
        assert sweep() == 1
        assert stuck.wait(timeout=10) != 0, "the leftover's process was stopped"
        assert leftover not in netns_names() and live in netns_names()
    finally:
        stuck.kill()
        for name in (leftover, live):
            run(["ip", "netns", "del", name], check=False)
