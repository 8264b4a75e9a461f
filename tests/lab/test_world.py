"""The lab's outside world comes up, answers, and goes away without a trace."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from idra.lab import state as S
from idra.lab import world
from idra.lab.state import LabState
from idra.netns import Netns, is_running, netns_names, run


@pytest.fixture
def lab_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "LAB_DIR", tmp_path / "idra-lab")
    yield S.LAB_DIR
    world.teardown(LabState.load())


def _lab_namespaces() -> list[str]:
    return [n for n in netns_names() if n.startswith(S.NS_PREFIX)]


def test_world_answers_then_leaves_nothing(lab_dir) -> None:
    state = LabState()
    state.save()
    world.build_world(state)
    ops = Netns(S.NS_PREFIX + "ops")

    def get(url: str) -> str:
        return ops.run("curl", "-gsS", "--max-time", "3", url).stdout

    assert get(f"http://{S.PUBLIC_V4}/") == S.OPS_V4
    assert get(f"http://[{S.PUBLIC_V6}]/") == "2001:db8:1::4"
    assert get(f"http://{S.SVC_V4}:{S.STREAMING_PORT}/").startswith("Now playing")
    (lab_dir / "refused.json").write_text(json.dumps({S.OPS_V4: "refused"}))
    assert "Proxy detected" in get(f"http://{S.SVC_V4}:{S.STREAMING_PORT}/")

    loaded = LabState.load()
    pids = [p.pid for p in loaded.processes]
    assert len(pids) == 4 and len(loaded.namespaces) == 4
    removed = world.teardown(loaded)
    assert removed
    assert not _lab_namespaces()
    assert not lab_dir.exists()
    assert not [pid for pid in pids if is_running(pid)]


def test_teardown_sweeps_a_half_made_lab(lab_dir) -> None:
    """A crashed ``up`` leaves namespaces the state never recorded: down removes them."""
    run(["ip", "netns", "add", S.NS_PREFIX + "orphan"])
    world.teardown(None)
    assert not _lab_namespaces()


def test_router_mac_stays_as_hosts_join_and_leave(lab_dir) -> None:
    """A bridge takes its lowest port's MAC unless given one: a client joining or leaving
    would then move the router's MAC under every node (seconds of lost packets)."""
    state = LabState()
    state.save()
    world.build_world(state)
    internet = Netns(S.NS_PREFIX + "internet")

    def router_mac() -> str:
        return internet.ip("-br", "link", "show", "br0").stdout.split()[2]

    assert router_mac() == S.ROUTER_MAC
    world._plug(state, "client9", *S.client_addresses(9))
    internet.ip("link", "set", "p-client9", "address", "00:00:00:00:00:01")  # lowest port
    assert router_mac() == S.ROUTER_MAC
    internet.ip("link", "del", "p-client9")
    assert router_mac() == S.ROUTER_MAC


def test_teardown_keeps_the_logs_of_a_failed_run(lab_dir) -> None:
    (lab_dir / "logs").mkdir(parents=True)
    (lab_dir / "logs" / "agent-node1.log").write_text("sync failed\n")
    kept = world.keep_logs()
    world.teardown(None)
    assert [p.relative_to(lab_dir) for p in lab_dir.rglob("*.log")] == [
        kept.relative_to(lab_dir) / "agent-node1.log"
    ]


def test_teardown_empties_a_lab_dir_that_is_a_mount_point(tmp_path) -> None:
    """/run/idra-lab as a tmpfs of its own: down (and demo's fresh start) empties it and
    leaves the mount point (rmdir would fail: EBUSY). Run in a private mount namespace
    with empty /run/netns and /run/wireguard, so no other lab is touched."""
    lab = tmp_path / "idra-lab"
    lab.mkdir()
    script = (
        "from idra.lab import world; import pathlib; "
        f"pathlib.Path('{lab}/state.json').write_text('{{}}'); "
        f"pathlib.Path('{lab}/logs').mkdir(); "
        "print(world.teardown(None)[-1])"
    )
    mounts = " && ".join(f"mount -t tmpfs none {d}" for d in (lab, "/run/netns", "/run/wireguard"))
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mkdir -p /run/netns /run/wireguard && {mounts} && "
         f'IDRA_LAB_DIR={lab} "$0" -c "$1" && ls -A {lab}', sys.executable, script],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"contents of {lab}"]
