"""Integrity signals with real rulesets and sysctl values in a network namespace
(issue 14): a ruleset change, a sysctl change, a failing ``nft`` (unknown, never the hash
of an empty output), a missing rendered file; and the running agent's metric and the
real control plane's verdict when the node's ruleset changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from idra.netns import Topology
from node_daemon.host import Integrity, nftables_sha256

from .conftest import Env, eventually

RULES = """table inet idra {
  chain input {
    type filter hook input priority 0; policy accept;
  }
}
"""


@pytest.fixture
def ns():
    with Topology("itg") as topo:
        node = topo.netns("node")
        node.run("nft", "-f", "-", input=RULES)
        yield node


def test_each_signal(ns, tmp_path: Path, monkeypatch) -> None:
    sysctl = tmp_path / "sysctl.conf"
    sysctl.write_text("net.ipv4.ip_forward = 1\nnet.ipv4.conf.all.rp_filter = 2\n")
    ns.sysctl("net.ipv4.ip_forward", 1)
    ns.sysctl("net.ipv4.conf.all.rp_filter", 2)
    integrity = Integrity(sysctl, ns.name)
    report, ok = integrity.check()
    assert ok is True and report["sysctl_ok"] is True
    assert len(report["nftables_sha256"]) == 64

    ns.run("nft", "add", "rule", "inet", "idra", "input", "tcp", "dport", "22", "accept")
    report, ok = integrity.check()
    assert ok is False and report["nftables_sha256"] != integrity.baseline
    ns.run("nft", "flush", "ruleset")
    ns.run("nft", "-f", "-", input=RULES)
    assert integrity.check()[1] is True, "the same rules again"

    ns.sysctl("net.ipv4.ip_forward", 0)
    report, ok = integrity.check()
    assert ok is False and report["sysctl_ok"] is False
    ns.sysctl("net.ipv4.ip_forward", 1)
    assert integrity.check()[1] is True

    shim = tmp_path / "bin"  # nft broken: exits 1 with no output
    shim.mkdir()
    (shim / "nft").write_text("#!/bin/sh\nexit 1\n")
    (shim / "nft").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    report, ok = integrity.check()
    assert report["nftables_sha256"] is None and ok is None, "unknown, not a hash of ''"
    monkeypatch.undo()
    assert nftables_sha256("no-such-netns") is None

    report, ok = Integrity(tmp_path / "missing.conf", ns.name).check()
    assert report["sysctl_ok"] is None and ok is None


def test_running_agent_reports_a_ruleset_change(env: Env) -> None:
    env.node.run("nft", "-f", "-", input=RULES)
    (env.tmp / "none.conf").write_text("net.ipv4.ip_forward = 0\n")
    env.start_agent()
    eventually(lambda: env.metric("idra_agent_integrity_ok") == 1, what="integrity ok")
    env.node.run("nft", "add", "rule", "inet", "idra", "input", "udp", "dport", "53", "drop")
    eventually(lambda: env.metric("idra_agent_integrity_ok") == 0, what="the change seen")
    assert env.metric("idra_agent_integrity_unknown") == 0
    with env.cp.client("operator") as ops:
        eventually(
            lambda: ops.get("/v1/nodes").json()["nodes"][0]["drain_reason"] == "compromised",
            what="the control plane's verdict",
        )
