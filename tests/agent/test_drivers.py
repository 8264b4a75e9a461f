"""Both WireGuard drivers on a real wireguard-go interface: the UAPI socket and the
``wg`` tool (the kernel path on nodes, which ``wg`` also drives here through UAPI)."""

from __future__ import annotations

import pytest

from idra.netns import Topology, run, unique_name
from node_daemon.wg.kernel import BATCH, WgToolDriver
from node_daemon.wg.uapi import UapiDriver
from tests.controlplane.conftest import wg_key


@pytest.fixture
def interface():
    with Topology("drv") as topo:
        name = unique_name("wgd")
        topo.wireguard(topo.netns("node"), name)
        yield name


@pytest.mark.parametrize("driver", [UapiDriver, WgToolDriver], ids=["uapi", "wg-tool"])
def test_configure_apply_read(interface: str, driver) -> None:
    wg = driver(interface)
    assert not wg.read().has_private_key
    private = run(["wg", "genkey"]).stdout.strip()
    wg.configure(private, 51999)
    device = wg.read()
    assert device.has_private_key and device.listen_port == 51999
    assert wg.public_key() == run(["wg", "pubkey"], input=private).stdout.strip()

    count = BATCH + 500  # more than one wg invocation
    peers = {wg_key(): f"10.96.{i // 250}.{i % 250 + 2}/32" for i in range(count)}
    first = next(iter(peers))
    peers[first] = "10.96.200.2/32,fd49:4452:4100::2/128"
    wg.apply(peers, [])
    live = {key: peer.allowed_ips for key, peer in wg.read().peers.items()}
    assert live == peers

    moved, gone = list(peers)[1], list(peers)[2:12]
    wg.apply({moved: "10.96.201.9/32"}, gone)
    live = {key: peer.allowed_ips for key, peer in wg.read().peers.items()}
    assert live[moved] == "10.96.201.9/32", "allowed IPs replaced, not appended"
    assert not set(gone) & set(live) and len(live) == count - 10
    assert UapiDriver(interface).read().peers.keys() == WgToolDriver(interface).read().peers.keys()


def test_wg_tool_never_puts_a_key_on_the_command_line(interface: str, tmp_path, monkeypatch):
    """/proc/*/cmdline is world-readable: keys go through stdin only (issue 14)."""
    log = tmp_path / "argv.log"
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "wg").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec /usr/bin/wg "$@"\n')
    (shim / "wg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:/usr/sbin:/usr/bin:/sbin:/bin")
    wg = WgToolDriver(interface)
    private = run(["wg", "genkey"]).stdout.strip()
    wg.configure(private, 51998)
    peers = {wg_key(): f"10.96.1.{i + 2}/32" for i in range(20)}
    wg.apply(peers, [])
    gone = list(peers)[:5]
    wg.apply({list(peers)[6]: "10.96.2.2/32"}, gone)
    live = {key: peer.allowed_ips for key, peer in wg.read().peers.items()}
    assert len(live) == 15 and live[list(peers)[6]] == "10.96.2.2/32"
    assert wg.read().has_private_key and wg.read().listen_port == 51998, "key kept on removal"
    argv = log.read_text()
    assert "addconf" in argv and "syncconf" in argv
    for key in [private, *peers]:
        assert key not in argv
