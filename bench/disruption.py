"""No disruption: a client pings through the node (flood-rate, bounded) while the node
applies repeated 1 % peer changes with the agent's own planner and driver; the client's
peer must lose no packet and keep its session (no new handshake, counters not reset)."""

from __future__ import annotations

import re
import subprocess
import time

from bench.datapath import SERVER_V4, _topology
from bench.peers import make_peers
from idra.netns import Topology

PINGS, PING_INTERVAL = 6000, 0.002  # 12 s of 500 packets/s each way


def _client_peer(node, ifname: str) -> tuple[int, int]:
    """(last handshake, rx bytes) of the peer that owns the client's address."""
    dump = node.run("wg", "show", ifname, "dump").stdout.splitlines()[1:]
    (row,) = [line.split("\t") for line in dump if "10.96.0.2/32" in line.split("\t")[3]]
    return int(row[4]), int(row[5])


def run_disruption(peers: int = 10_000, rounds: int = 20) -> dict:
    from node_daemon.peers import owners_of, plan
    from node_daemon.wg.uapi import UapiDriver

    with Topology("bdisr") as topo:
        cfg, client, node, _server, ruleset = _topology(topo)
        node.run("nft", "-f", "-", input=ruleset)
        ifname = cfg.tunnel_interface
        driver = UapiDriver(ifname)
        pools = [cfg.client_pool_ipv4, cfg.client_pool_ipv6]
        live = make_peers(peers, start=10)  # clear of the client's 10.96.0.2
        driver.apply(live, [])
        client.run("ping", "-c", "5", "-i", "0.2", SERVER_V4, check=False)  # handshake
        before = _client_peer(node, ifname)
        flood = client.spawn(
            "ping", "-n", "-q", "-c", str(PINGS), "-i", str(PING_INTERVAL), "-W", "1", SERVER_V4,
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        applied, times = 0, []
        owners = owners_of(live)
        next_start = peers + 1000
        for _ in range(rounds):
            step = make_peers(peers // 200, start=next_start)
            next_start += peers // 200
            removed = list(live)[: peers // 200]
            changes = [{"public_key": k, "allowed_ips": [v]} for k, v in step.items()]
            started = time.perf_counter()
            result = plan(changes, removed, live, pools, full=False, owners=owners)
            driver.apply(result.upserts, result.removes)
            times.append(time.perf_counter() - started)
            for key in result.removes:  # the agent's state after the apply (untimed)
                del live[key]
            live.update(result.upserts)
            owners = owners_of(live)
            applied += len(result.upserts) + len(result.removes)
            time.sleep(0.4)
        out, _ = flood.communicate(timeout=60)
        after = _client_peer(node, ifname)
        count = int(node.run("wg", "show", ifname, "peers").stdout.count("\n"))
    sent, received = (int(n) for n in re.findall(r"(\d+) (?:packets transmitted|received)", out))
    return {
        "peers": peers,
        "rounds": rounds,
        "changed": applied,
        "apply_ms_max": 1000 * max(times),
        "pings_sent": sent,
        "pings_received": received,
        "handshake_kept": after[0] == before[0] and before[0] > 0,
        "rx_grew": after[1] > before[1],
        "peers_after": count,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run_disruption(peers=2000, rounds=5), indent=1))
