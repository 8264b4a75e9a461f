"""Fault injection (issue 14): the packaged agent against a scripted control plane and a
scripted IMDSv2 stand-in that take turns failing in every way listed in
tests/agent/scripted.py, each several times, while a real WireGuard client pings through
the node. The agent never exits, no ping of the unchanged client is lost, every fault
is counted, and after each fault the interface matches the control plane's peers within
one backoff bound. And a draining agent adds no peer that a control plane still offers."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from idra.netns import unique_name, wg_keypair

from .conftest import Env, eventually, scripted_world, start_scripted_agent
from .scripted import (
    CP_FAULTS,
    EXPECTED_KIND,
    IMDS_FAULTS,
    ScriptedControlPlane,
    random_key,
)

INTERVAL, BACKOFF_MAX, DEADLINE = 0.3, 1.0, 1.5
# after a fault ends: at most one backoff wait, then one cycle (heartbeat, peers, apply)
BOUND = BACKOFF_MAX + 2 * INTERVAL + 1.0
REPEATS = 2
CLIENT_IP = "10.96.0.2/32"


@pytest.fixture
def world(tmp_path: Path):
    with scripted_world(tmp_path, ScriptedControlPlane(oversize=1 << 20), "flt") as world:
        yield world


def start_agent(env: Env, pyz: Path):
    (env.tmp / "sysctl.conf").write_text("")
    start_scripted_agent(
        env, pyz, "--imds-deadline", str(DEADLINE), "--heartbeat-interval", str(INTERVAL),
        "--scan-interval", "1", "--backoff-max", str(BACKOFF_MAX), "--request-timeout", "5",
        "--request-deadline", str(DEADLINE), "--max-reply-bytes", str(256 << 10),
        "--max-peers", "1000",
    )  # fmt: skip


def add_client(env: Env, private: str, node_key: str) -> SimpleNamespace:
    ns = env.topo.netns("client")
    env.topo.link(env.node, "c2", ns, "eth0")
    env.node.addr("c2", "192.0.2.1/32")
    env.node.route("198.18.2.2/32", "dev", "c2")
    ns.addr("eth0", "198.18.2.2/32")
    ns.route("192.0.2.1/32", "dev", "eth0")
    wg = unique_name("wgc")
    env.topo.wireguard(ns, wg)
    ns.run("wg", "set", wg, "private-key", "/dev/stdin", "peer", node_key,
           "endpoint", "192.0.2.1:51820", "allowed-ips", "10.96.0.0/12", input=private)  # fmt: skip
    ns.addr(wg, CLIENT_IP)
    ns.ip("link", "set", wg, "up")
    ns.route("10.96.0.0/12", "dev", wg)
    return SimpleNamespace(ns=ns)


def faults(env: Env, dependency: str, kind: str | None) -> float:
    if kind is None:
        return 0.0
    return env.metric("idra_agent_faults_total", f'dependency="{dependency}",kind="{kind}"')


def rejected(env: Env) -> float:
    text = env.metrics()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("idra_agent_peers_rejected_total{")
    )


def inject(env: Env, cp, server, dependency: str, fault: str, desired: dict) -> float:
    """One fault until the agent has met it, while the control plane's peers change;
    returns how long the agent took to converge once the fault ended."""
    kind = EXPECTED_KIND[fault]
    counted, refused = faults(env, dependency, kind), rejected(env)
    registrations = env.metric("idra_agent_registrations_total")
    server.set_fault(fault)
    cp.set_peers(desired)  # the control plane moves on during the fault
    started = time.monotonic()
    if kind is not None:
        met = lambda: faults(env, dependency, kind) > counted  # noqa: E731
    elif fault in ("wide_pool", "bad_keys"):
        met = lambda: rejected(env) >= refused + 3  # noqa: E731
    else:
        met = lambda: env.metric("idra_agent_registrations_total") > registrations  # noqa: E731
    eventually(met, timeout=15, what=f"{dependency} {fault} met (counted as {kind})")
    time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
    assert env.agent.poll() is None, f"the agent exited on {fault}"
    server.set_fault(None)
    ended = time.monotonic()
    want = {key: ",".join(ips) for key, ips in desired.items()}
    eventually(
        lambda: {k: v[1] for k, v in env.dump().items()} == want,
        timeout=BOUND,
        what=f"convergence after {dependency} {fault}",
    )
    allowed = {v[1] for v in env.dump().values()}
    assert not allowed & {"169.254.169.254/32", "127.0.0.1/32", "10.96.0.1/32"}
    return time.monotonic() - ended


def test_agent_survives_every_fault_and_converges(world, pyz: Path) -> None:
    env, cp, imds = world
    private, public = wg_keypair()
    cp.set_peers({public: [CLIENT_IP]})
    start_agent(env, pyz)
    node_key = env.node.run("wg", "show", env.wg, "public-key").stdout.strip()
    client = add_client(env, private, node_key)
    eventually(lambda: env.ping(client, count=1) == 1, what="the tunnel up")
    ping = subprocess.Popen(
        client.ns.exec_args("ping", "-n", "-q", "-i", "0.2", "-W", "1", "10.96.0.1"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        schedule = [(cp, "control_plane", f) for f in CP_FAULTS]
        schedule += [(imds, "imds", f) for f in IMDS_FAULTS]
        slowest = 0.0
        for repeat in range(REPEATS):
            for index, (server, dependency, fault) in enumerate(schedule):
                extra = f"10.96.{repeat + 1}.{index + 2}/32"
                desired = {public: [CLIENT_IP], random_key(): [extra]}
                slowest = max(slowest, inject(env, cp, server, dependency, fault, desired))
        assert env.agent.poll() is None
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=10)
    finally:
        ping.kill()
        ping.wait()
    sent = int(out.split(" packets transmitted")[0].rsplit(None, 1)[1])
    assert sent > 100 and f"{sent} packets transmitted, {sent} received" in out, out
    log = env.log.read_text()
    assert "Traceback" not in log
    assert public not in log and node_key not in log, "no key in the log"
    assert all(line.isprintable() for line in log.splitlines())
    print(f"{REPEATS * len(schedule)} faults, {sent} pings, slowest convergence {slowest:.2f} s")


def test_a_draining_agent_adds_no_peer_the_control_plane_offers(world, pyz: Path) -> None:
    """Only the agent stands between a draining node and a control plane (buggy or
    hostile) that still hands it new users: updates and removals apply, additions never."""
    env, cp, _ = world
    stays, gone, new = random_key(), random_key(), random_key()
    cp.set_peers({stays: ["10.96.0.2/32"], gone: ["10.96.0.3/32"]})
    start_agent(env, pyz)
    eventually(lambda: set(env.dump()) == {stays, gone}, what="the first peers")
    cp.drain = True
    eventually(lambda: env.metric("idra_agent_draining") == 1, what="the drain")
    cp.set_peers({stays: ["10.96.0.4/32"], new: ["10.96.0.5/32"]})
    eventually(
        lambda: stays in env.dump() and env.dump()[stays][1] == "10.96.0.4/32",
        what="the update",
    )
    eventually(lambda: gone not in env.dump(), what="the removal")
    assert set(env.dump()) == {stays}, "a draining node took a new peer"
