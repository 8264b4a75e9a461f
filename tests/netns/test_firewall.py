"""The rendered nftables.nft and sysctl.conf, proven with real packets.

Every "blocked" case is first shown to pass under a permissive baseline (forward all,
masquerade), so each test fails if its rule stops doing its job.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import subprocess
import time

import pytest

from .conftest import (
    BASELINE,
    NODE_V4,
    NODE_V6,
    PUBLIC_V4,
    PUBLIC_V6,
    ROUTER_V4,
    ROUTER_V6,
    UPLINK_LINK_LOCAL,
    VPC_TARGETS,
    Lab,
)


@pytest.fixture
def idra(lab: Lab) -> Lab:
    """The lab with the node's default rendered ruleset loaded (restored afterwards)."""
    lab.load(lab.ruleset())
    yield lab
    lab.load(lab.ruleset())


def test_wireguard_port_open_other_ports_closed(idra: Lab) -> None:
    client = idra.clients[0]
    assert idra.ping(client.ns, idra.cfg.tunnel_address(4).split("/")[0]) == 1
    handshake = client.ns.run("wg", "show", client.wg, "latest-handshakes").stdout.split()[1]
    assert int(handshake) > time.time() - 180
    assert idra.probe(idra.router, "udp", NODE_V4, 9999) is None
    assert idra.probe(idra.router, "udp", NODE_V6, 9999) is None
    idra.load(BASELINE)
    assert idra.probe(idra.router, "udp", NODE_V4, 9999) == ROUTER_V4


def test_dhcp_replies_reach_the_node(idra: Lab) -> None:
    """Lease renewals: a DHCP server's reply on the uplink reaches the node's client
    port; from another source port it does not."""
    assert idra.probe(idra.router, "udp", NODE_V4, 68, 67, ROUTER_V4) == ROUTER_V4
    assert idra.probe(idra.router, "udp", NODE_V4, 68, 9067, ROUTER_V4) is None


def test_dhcpv6_replies_reach_the_node_from_link_local_only(idra: Lab) -> None:
    """DHCPv6 servers answer from their link-local address, to the client's: that
    reaches the node's client port; the same from a global address does not."""
    links = json.loads(idra.node.run("ip", "-j", "-6", "addr", "show", "eth0").stdout)
    local = next(a["local"] for a in links[0]["addr_info"] if a["local"].startswith("fe80:"))
    server = f"{UPLINK_LINK_LOCAL}%n0"
    assert idra.probe(idra.router, "udp", f"{local}%n0", 546, 547, server) is not None
    assert idra.probe(idra.router, "udp", NODE_V6, 546, 547, ROUTER_V6) is None


def test_loopback_open_on_the_node(idra: Lab) -> None:
    """The node's own services reach each other over loopback (the agent's metrics, the
    node exporter): the input policy drops everything else."""
    assert idra.probe(idra.node, "tcp", "127.0.0.1") == "127.0.0.1"
    assert idra.probe(idra.node, "tcp", "::1") == "::1"


@pytest.mark.parametrize(("node", "router"), [(NODE_V4, ROUTER_V4), (NODE_V6, ROUTER_V6)])
def test_ssh_only_from_bastion(idra: Lab, node: str, router: str) -> None:
    outsider = idra.clients[0].ns  # reaches the node over the router from 192.0.2.18
    assert idra.probe(idra.router, "tcp", node, 22) is None, "SSH must be closed by default"
    idra.load(idra.ruleset(ssh_bastion_cidrs=[ipaddress.ip_network(router)]))
    assert idra.probe(idra.router, "tcp", node, 22) == router
    assert idra.probe(outsider, "tcp", node, 22) is None
    assert idra.probe(idra.router, "tcp", node, 8080) is None


@pytest.mark.parametrize("node", [NODE_V4, NODE_V6])
def test_icmp_echo_rate_limited(idra: Lab, node: str) -> None:
    assert idra.ping(idra.router, node) == 1
    flood = idra.ping(idra.router, node, count=100, interval=0.002)
    assert 5 <= flood <= 60, f"{flood}/100 echo replies: not rate limited"
    idra.load(BASELINE)
    assert idra.ping(idra.router, node, count=100, interval=0.002) >= 95


def test_ipv6_neighbour_discovery_passes_the_policy(idra: Lab) -> None:
    def resolve() -> bool:
        for ns in (idra.router, idra.node):
            ns.ip("-6", "neigh", "flush", "all")
        return idra.ping(idra.router, NODE_V6) == 1 and idra.ping(idra.node, ROUTER_V6) == 1

    assert resolve()
    without_nd = "\n".join(
        line for line in idra.ruleset().splitlines() if "nd-neighbor-solicit" not in line
    )
    idra.load(without_nd)
    assert not resolve(), "the ND rule is what lets neighbour discovery through"


@pytest.mark.parametrize(("public", "node"), [(PUBLIC_V4, NODE_V4), (PUBLIC_V6, NODE_V6)])
def test_client_traffic_leaves_with_the_node_address(idra: Lab, public: str, node: str) -> None:
    for client in idra.clients:
        assert idra.probe(client.ns, "tcp", public) == node
        assert idra.probe(client.ns, "udp", public) == node


@pytest.mark.parametrize("target", VPC_TARGETS.values(), ids=VPC_TARGETS.keys())
def test_private_and_metadata_destinations_dropped(lab: Lab, target: str) -> None:
    client = lab.clients[0].ns
    lab.load(BASELINE)
    assert lab.probe(client, "tcp", target) is not None, "baseline must reach the target"
    lab.load(lab.ruleset())
    assert lab.unreachable(client, target)
    assert _counter(lab, "forward_blocked_destination") > 0


def test_link_local_v6_destination_dropped(idra: Lab) -> None:
    """A client cannot reach a link-local neighbour of the node's uplink.

    The kernel itself never routes fe80::/10 off-link, so no baseline reaches it either;
    the ruleset's blocked set (checked live) is the second line of defence.
    """
    client = idra.clients[0]
    assert idra.unreachable(client.ns, f"{UPLINK_LINK_LOCAL}%{client.wg}")
    assert idra.probe(idra.node, "tcp", f"{UPLINK_LINK_LOCAL}%eth0") is not None, "neighbour up"
    member = idra.node.run(
        "nft",
        "get",
        "element",
        "inet",
        "idra_filter",
        "blocked_dst_v6",
        f"{{ {UPLINK_LINK_LOCAL} }}",
        check=False,
    )
    assert member.returncode == 0, member.stderr


@pytest.mark.parametrize(("public", "node"), [(PUBLIC_V4, NODE_V4), (PUBLIC_V6, NODE_V6)])
def test_only_the_tunnel_is_forwarded_to_the_uplink(lab: Lab, public: str, node: str) -> None:
    """A host on another interface of the node (not the tunnel) cannot use the node as
    its router to the internet: the forward accept names its input interface."""
    lab.load(BASELINE)
    assert lab.probe(lab.stranger, "tcp", public) == node, "baseline must forward it"
    lab.load(lab.ruleset())
    assert lab.unreachable(lab.stranger, public)


def test_spoofed_source_dropped(lab: Lab) -> None:
    """A client whose peer holds an address outside the pool (an agent bug, a tampered
    peer list) still cannot send from it: the source check drops it."""
    client, spoofed = lab.clients[0], "10.200.0.5"
    key = client.ns.run("wg", "show", client.wg, "public-key").stdout.strip()
    tun = lab.cfg.tunnel_interface
    allowed = f"{client.v4}/32,{client.v6}/128"
    lab.node.run("wg", "set", tun, "peer", key, "allowed-ips", f"{allowed},{spoofed}/32")
    lab.node.route(f"{spoofed}/32", "dev", tun)
    lab.router.route(f"{spoofed}/32", "via", NODE_V4)
    client.ns.addr(client.wg, f"{spoofed}/32")
    try:
        lab.load(BASELINE)
        assert lab.probe(client.ns, "udp", PUBLIC_V4, 8080, 40000, spoofed) is not None
        lab.load(lab.ruleset())
        dropped = _counter(lab, "forward_spoofed_source")
        assert lab.probe(client.ns, "udp", PUBLIC_V4, 8080, 40001, spoofed) is None
        assert _counter(lab, "forward_spoofed_source") > dropped
    finally:
        client.ns.ip("addr", "del", f"{spoofed}/32", "dev", client.wg)
        lab.router.ip("route", "del", f"{spoofed}/32")
        lab.node.ip("route", "del", f"{spoofed}/32")
        lab.node.run("wg", "set", tun, "peer", key, "allowed-ips", allowed)


@pytest.mark.parametrize("version", [4, 6])
def test_client_to_client_dropped(lab: Lab, version: int) -> None:
    one, two = lab.clients
    target = two.v4 if version == 4 else two.v6
    lab.load(BASELINE)
    assert lab.probe(one.ns, "tcp", target) is not None, "baseline must reach the client"
    lab.load(lab.ruleset())
    assert lab.unreachable(one.ns, target)


@pytest.mark.parametrize("public", [PUBLIC_V4, PUBLIC_V6])
def test_smtp_blocked_when_enabled(lab: Lab, public: str) -> None:
    client = lab.clients[0].ns
    lab.load(lab.ruleset(block_smtp=False))
    assert lab.probe(client, "tcp", public, 25) is not None
    lab.load(lab.ruleset())
    assert lab.probe(client, "tcp", public, 25) is None
    assert lab.probe(client, "tcp", public, 8080) is not None
    assert _counter(lab, "forward_blocked_smtp") > 0


@pytest.mark.parametrize("version", [4, 6])
def test_unsolicited_inbound_to_client_dropped(lab: Lab, version: int) -> None:
    client = lab.clients[0]
    target = client.v4 if version == 4 else client.v6
    lab.load(BASELINE)
    assert lab.probe(lab.router, "tcp", target) is not None, "baseline must reach the client"
    lab.load(lab.ruleset())
    assert lab.unreachable(lab.router, target)


@pytest.mark.parametrize("public", [PUBLIC_V4, PUBLIC_V6])
def test_syn_mss_clamped_to_the_tunnel_mtu(lab: Lab, public: str) -> None:
    """The server offers its full-MTU MSS; the client must receive the tunnel's."""
    header = 40 if ":" not in public else 60
    lab.load(BASELINE)
    assert _synack_mss(lab, public) == 1500 - header
    lab.load(lab.ruleset())
    assert _synack_mss(lab, public) == lab.cfg.tunnel_mtu - header


def _synack_mss(lab: Lab, public: str) -> int:
    """MSS of the SYN-ACK the first client receives from ``public`` port 8080."""
    client = lab.clients[0]
    capture = subprocess.Popen(
        client.ns.exec_args(
            "tcpdump",
            "-i",
            client.wg,
            "-nn",
            "-l",
            "-c",
            "1",
            "--immediate-mode",
            f"src host {public} and tcp src port 8080 and tcp[tcpflags] & tcp-syn != 0"
            if ":" not in public
            else f"src host {public} and tcp src port 8080 and ip6[13 + 40] & 2 != 0",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_listening(capture)
        assert lab.probe(client.ns, "tcp", public) is not None
        out, _ = capture.communicate(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            capture.kill()
        capture.wait()
    match = re.search(r"mss (\d+)", out)
    assert match, f"no SYN-ACK with an MSS captured: {out!r}"
    return int(match.group(1))


def _wait_listening(capture: subprocess.Popen) -> None:
    for _ in range(5):  # tcpdump prints a notice or two, then "listening on ..."
        line = capture.stderr.readline()
        if "listening on" in line:
            return
    raise AssertionError(f"tcpdump did not start: {line!r}")


def _counter(lab: Lab, name: str) -> int:
    out = lab.node.run("nft", "list", "counter", "inet", "idra_filter", name).stdout
    return int(re.search(r"packets (\d+)", out).group(1))
