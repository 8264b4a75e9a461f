"""A node, an "internet" router, a VPC/metadata host and two WireGuard clients, each in
its own network namespace, for proving the rendered firewall with real packets.

    client1 ─┐                         ┌─ vpc (10/8, 172.16/12, 192.168/16, 100.64/10,
    client2 ─┼─ router ("internet") ───┤       169.254.169.254, fd00::5)
             │  198.51.100.80           └─ node eth0 203.0.113.10 ── wg → clients
             │  2001:db8:80::80                    eth1 ── stranger (192.0.2.98)

Clients reach the node's WireGuard port over the router and send everything else
through their tunnel. The stranger sits on another of the node's interfaces (not the
tunnel) and sends everything through the node. Addresses exist only inside these
namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from idra.config import StackConfig, load_stack
from idra.netns import Netns, Topology, netns_names, unique_name, wg_keypair
from idra.render import render_node_files

PROBE = Path(__file__).with_name("probe.py")
PORTS = ("22", "25", "68", "546", "8080", "9999")  # 68, 546: DHCP and DHCPv6 clients
NODE_V4, NODE_V6 = "203.0.113.10", "2001:db8:1::10"
ROUTER_V4, ROUTER_V6 = "203.0.113.1", "2001:db8:1::1"
UPLINK_LINK_LOCAL = "fe80::5"  # a neighbour on the node's uplink segment
STRANGER_V4, STRANGER_V6 = "192.0.2.98", "2001:db8:5::2"  # behind the node's eth1
PUBLIC_V4, PUBLIC_V6 = "198.51.100.80", "2001:db8:80::80"
VPC_TARGETS = {
    "metadata": "169.254.169.254",
    "10/8": "10.0.0.5",
    "172.16/12": "172.16.0.5",
    "192.168/16": "192.168.0.5",
    "100.64/10 (CGNAT)": "100.64.0.5",
    "metadata v6 (fc00::/7)": "fd00:ec2::254",
}
# Routes the clients send through their tunnel (everything under test).
TUNNELLED = [
    PUBLIC_V4,
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.169.254",
    PUBLIC_V6,
    "fc00::/7",
]
BASELINE = """flush ruleset
table inet baseline {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade
	}
}
"""


@dataclass
class Client:
    ns: Netns
    wg: str
    v4: str
    v6: str


@dataclass
class Lab:
    topology: Topology
    cfg: StackConfig
    router: Netns
    node: Netns
    vpc: Netns
    stranger: Netns
    clients: list[Client]

    def ruleset(self, **changes) -> str:
        """The node's rendered nftables.nft, for this lab's config with ``changes``."""
        return render_node_files(self.cfg.model_copy(update=changes))["nftables.nft"]

    def load(self, ruleset: str) -> None:
        self.node.run("nft", "-f", "-", input=ruleset)

    def probe(
        self, ns: Netns, kind: str, host: str, port: int = 8080, *source: str | int
    ) -> str | None:
        """What the server at host:port saw as our source address; None if unreachable.
        ``source`` (UDP): the source port, and address, to send from."""
        args = (kind, host, str(port), *map(str, source))
        result = ns.run(sys.executable, str(PROBE), *args, check=False)
        return result.stdout.strip() or None

    def unreachable(self, ns: Netns, host: str, port: int = 8080) -> bool:
        """No answer over TCP nor UDP. Both probes run at once: a dropped probe costs
        its whole timeout."""
        with ThreadPoolExecutor(2) as pool:
            answers = pool.map(lambda kind: self.probe(ns, kind, host, port), ("tcp", "udp"))
            return list(answers) == [None, None]

    def ping(self, ns: Netns, host: str, count: int = 1, interval: float = 0.2) -> int:
        """Number of echo replies received."""
        args = f"ping -n -q -c {count} -i {interval} -W 1 {host}".split()
        result = ns.run(*args, check=False, timeout=count * interval + 10)
        for line in result.stdout.splitlines():
            if "received" in line:
                return int(line.split(",")[1].split()[0])
        raise AssertionError(f"ping printed no summary: {result.stdout} {result.stderr}")


@pytest.fixture(scope="package")
def lab() -> Lab:
    base = load_stack("staging")
    cfg = base.model_copy(update={"tunnel_interface": unique_name("wgn")})
    with Topology("fw") as topo:
        router, node, vpc = topo.netns("router"), topo.netns("node"), topo.netns("vpc")
        for ns in (router, node):
            ns.sysctl("net.ipv4.ip_forward", 1)
            ns.sysctl("net.ipv6.conf.all.forwarding", 1)

        topo.link(router, "n0", node, "eth0")
        router.addr("n0", f"{ROUTER_V4}/24", f"{ROUTER_V6}/64", f"{UPLINK_LINK_LOCAL}/64")
        node.addr("eth0", f"{NODE_V4}/24", f"{NODE_V6}/64")
        node.route("default", "via", ROUTER_V4)
        node.route("default", "via", ROUTER_V6)

        topo.link(router, "vpc", vpc, "eth0")
        router.addr("vpc", "192.0.2.49/28", "2001:db8:4::1/64")
        vpc.addr("eth0", "192.0.2.50/28", "2001:db8:4::2/64")
        vpc.addr("lo", *(f"{a}/{128 if ':' in a else 32}" for a in VPC_TARGETS.values()))
        vpc.route("default", "via", "192.0.2.49")
        vpc.route("default", "via", "2001:db8:4::1")
        for dest in (
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.254.169.254",
        ):
            router.route(dest, "via", "192.0.2.50")
        router.route("fc00::/7", "via", "2001:db8:4::2")
        router.route(str(cfg.client_pool_ipv4), "via", NODE_V4)
        router.route(str(cfg.client_pool_ipv6), "via", NODE_V6)
        router.addr("lo", f"{PUBLIC_V4}/32", f"{PUBLIC_V6}/128")

        stranger = topo.netns("stranger")
        topo.link(node, "eth1", stranger, "eth0")
        node.addr("eth1", "192.0.2.97/28", "2001:db8:5::1/64")
        stranger.addr("eth0", f"{STRANGER_V4}/28", f"{STRANGER_V6}/64")
        stranger.route("default", "via", "192.0.2.97")
        stranger.route("default", "via", "2001:db8:5::1")
        router.route("192.0.2.96/28", "via", NODE_V4)
        router.route("2001:db8:5::/64", "via", NODE_V6)

        node.load_sysctl(render_node_files(cfg)["sysctl.conf"])
        node.run("nft", "-f", "-", input=render_node_files(cfg)["nftables.nft"])
        node_key, node_pub = wg_keypair()
        topo.wireguard(node, cfg.tunnel_interface)
        node.run(
            "wg",
            "set",
            cfg.tunnel_interface,
            "private-key",
            "/dev/stdin",
            "listen-port",
            str(cfg.wireguard_port),
            input=node_key,
        )
        node.addr(cfg.tunnel_interface, cfg.tunnel_address(4), cfg.tunnel_address(6))
        node.ip("link", "set", cfg.tunnel_interface, "mtu", str(cfg.tunnel_mtu), "up")

        clients = []
        for i in (1, 2):
            ns = topo.netns(f"client{i}")
            topo.link(router, f"c{i}", ns, "eth0")
            router.addr(f"c{i}", f"192.0.2.{16 * i + 1}/28", f"2001:db8:{i + 1}::1/64")
            ns.addr("eth0", f"192.0.2.{16 * i + 2}/28", f"2001:db8:{i + 1}::2/64")
            ns.route("default", "via", f"192.0.2.{16 * i + 1}")
            ns.route("default", "via", f"2001:db8:{i + 1}::1")
            client = Client(
                ns, unique_name(f"wgc{i}"), f"10.96.0.{i + 1}", f"fd49:4452:4100::{i + 1}"
            )
            key, pub = wg_keypair()
            node.run(
                "wg",
                "set",
                cfg.tunnel_interface,
                "peer",
                pub,
                "allowed-ips",
                f"{client.v4}/32,{client.v6}/128",
            )
            topo.wireguard(ns, client.wg)
            ns.run(
                "wg",
                "set",
                client.wg,
                "private-key",
                "/dev/stdin",
                "peer",
                node_pub,
                "endpoint",
                f"{NODE_V4}:{cfg.wireguard_port}",
                "allowed-ips",
                "0.0.0.0/0,::/0",
                input=key,
            )
            ns.addr(client.wg, f"{client.v4}/32", f"{client.v6}/128")
            ns.ip("link", "set", client.wg, "mtu", str(cfg.tunnel_mtu), "up")
            for dest in [*TUNNELLED, str(cfg.client_pool_ipv4), str(cfg.client_pool_ipv6)]:
                ns.route(dest, "dev", client.wg)
            clients.append(client)

        for ns in (router, node, vpc, *(c.ns for c in clients)):
            server = topo.spawn(
                ns, sys.executable, str(PROBE), "serve", *PORTS, stdout=subprocess.PIPE, text=True
            )
            assert server.stdout.readline().strip() == "ready"

        lab = Lab(topo, cfg, router, node, vpc, stranger, clients)
        for client in clients:  # handshake through the rendered ruleset
            assert lab.ping(client.ns, cfg.tunnel_address(4).split("/")[0], count=3) > 0
        yield lab
    names = {ns.name for ns in (router, node, vpc, stranger, *(c.ns for c in clients))}
    left = set(netns_names())
    assert not names & left, "namespaces left behind"
    assert not any(Path(f"/var/run/wireguard/{c.wg}.sock").exists() for c in clients)
