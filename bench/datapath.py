"""Data path: iperf3 TCP/UDP throughput and ping latency through a wireguard-go tunnel,
node with the rendered IDRA ruleset and sysctl vs the same path with no firewall.

    client (wg) ──▶ server/"internet" ──▶ node eth0 (tunnel, ruleset?) ──▶ back out eth0
                   (iperf3 -s, routes)            masqueraded ──▶ server
"""

from __future__ import annotations

import json
import statistics
import time

from idra.config import load_stack
from idra.netns import Netns, Topology, unique_name, wg_keypair
from idra.render import render_node_files

NO_FIREWALL = "flush ruleset\n"
# Profiling by subtraction: only what any NAT gateway pays (conntrack + masquerade).
CONNTRACK_NAT = """flush ruleset
table inet nat_only {
    chain forward { type filter hook forward priority 0; ct state established,related accept; }
    chain post { type nat hook postrouting priority 100; oifname "eth0" masquerade; }
}
"""
SERVER_V4 = "198.51.100.80"
NODE_V4 = "198.51.100.10"


def _topology(topo: Topology):
    cfg = load_stack("staging").model_copy(update={"tunnel_interface": unique_name("wgb")})
    client, node, server = topo.netns("client"), topo.netns("node"), topo.netns("server")
    # The server namespace is the internet: it routes the client's encrypted packets to the
    # node's uplink and serves iperf3; the node, like on EC2, has that one uplink.
    topo.link(client, "eth0", server, "eth1")
    topo.link(node, "eth0", server, "eth0")
    client.addr("eth0", "192.0.2.2/24")
    client.route("default", "via", "192.0.2.1")
    server.addr("eth1", "192.0.2.1/24")
    server.addr("eth0", f"{SERVER_V4}/24")  # also the node's gateway: one source address
    server.sysctl("net.ipv4.ip_forward", "1")
    server.route(str(cfg.client_pool_ipv4), "via", NODE_V4)  # no-firewall run: un-NATed
    node.addr("eth0", f"{NODE_V4}/24")
    node.route("default", "via", SERVER_V4)
    files = render_node_files(cfg)
    node.load_sysctl(files["sysctl.conf"])
    node_key, node_pub = wg_keypair()
    client_key, client_pub = wg_keypair()
    client_wg = unique_name("wgbc")
    topo.wireguard(node, cfg.tunnel_interface)
    topo.wireguard(client, client_wg)
    node.run(
        "wg",
        "set",
        cfg.tunnel_interface,
        "private-key",
        "/dev/stdin",
        "listen-port",
        "51820",
        "peer",
        client_pub,
        "allowed-ips",
        "10.96.0.2/32",
        input=node_key,
    )
    client.run(
        "wg",
        "set",
        client_wg,
        "private-key",
        "/dev/stdin",
        "peer",
        node_pub,
        "endpoint",
        f"{NODE_V4}:51820",
        "allowed-ips",
        "0.0.0.0/0",
        input=client_key,
    )
    node.addr(cfg.tunnel_interface, cfg.tunnel_address(4))
    node.ip("link", "set", cfg.tunnel_interface, "mtu", "1420", "up")
    client.addr(client_wg, "10.96.0.2/32")
    client.ip("link", "set", client_wg, "mtu", "1420", "up")
    client.route(f"{SERVER_V4}/32", "dev", client_wg)
    return cfg, client, node, server, files["nftables.nft"]


def _iperf(client: Netns, *args: str) -> dict:
    out = client.run("iperf3", "-c", SERVER_V4, "-J", *args, timeout=60).stdout
    return json.loads(out)["end"]


UDP_OFFERED = "150M"  # below the 2-core tunnel's capacity: compares loss, not CPU contention


def _measure(client: Netns, seconds: int) -> dict[str, float]:
    tcp = _iperf(client, "-t", str(seconds))
    udp = _iperf(client, "-u", "-b", UDP_OFFERED, "-l", "1300", "-t", str(seconds))
    ping = client.run("ping", "-n", "-q", "-c", "200", "-i", "0.005", SERVER_V4, timeout=30)
    rtt = ping.stdout.strip().splitlines()[-1].split("=")[1].split("/")
    return {
        "tcp_mbps": tcp["sum_received"]["bits_per_second"] / 1e6,
        "udp_mbps": udp["sum"]["bits_per_second"] / 1e6 * (1 - udp["sum"]["lost_percent"] / 100),
        "udp_loss_pct": udp["sum"]["lost_percent"],
        "rtt_avg_ms": float(rtt[1]),
        "rtt_p_mdev_ms": float(rtt[3].split()[0]),
    }


def run_datapath(repeats: int = 3, seconds: int = 5) -> dict:
    """Median of ``repeats`` alternating runs per variant (each run about 2 x seconds)."""
    with Topology("bench") as topo:
        _, client, node, server, ruleset = _topology(topo)
        variants = {"idra": ruleset, "conntrack + NAT only": CONNTRACK_NAT,
                    "no firewall": NO_FIREWALL}  # fmt: skip
        results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        topo.spawn(server, "iperf3", "-s")
        time.sleep(0.5)
        client.run("ping", "-c", "3", "-i", "0.2", SERVER_V4, check=False)  # handshake
        for _ in range(repeats):
            for variant, rules in variants.items():
                node.run("nft", "-f", "-", input=rules)
                results[variant].append(_measure(client, seconds))
    return {
        variant: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        | {"tcp_min": min(r["tcp_mbps"] for r in runs), "tcp_max": max(r["tcp_mbps"] for r in runs)}
        for variant, runs in results.items()
    }


if __name__ == "__main__":
    print(json.dumps(run_datapath(repeats=1, seconds=3), indent=1))
