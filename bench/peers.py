"""Peer apply on a real wireguard-go interface: a 1 % change (half adds, half removes)
applied by the agent's driver vs ``wg syncconf`` with the full new config vs one
``wg set`` process per changed peer; plus the initial full load of each size.

wireguard-go holds at most 65,536 peers per interface, so real interfaces go up to 60k;
the agent's own work (diff and validation) is measured in memory up to 200k elsewhere.
"""

from __future__ import annotations

import ipaddress
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.keys import random_key
from idra.netns import Topology, run, unique_name

POOL = ipaddress.IPv4Network("10.96.0.0/12")


def make_peers(count: int, start: int = 0) -> dict[str, str]:
    """``count`` peers: random 32-byte public keys (test identifiers) → one /32 each."""
    hosts = POOL.hosts()
    for _ in range(start + 2):  # skip the node's own first address
        next(hosts)
    return {random_key(): f"{next(hosts)}/32" for _ in range(count)}


def config_text(private_key: str, peers: dict[str, str]) -> str:
    lines = ["[Interface]", f"PrivateKey = {private_key}", "ListenPort = 51820", ""]
    for key, allowed in peers.items():
        lines += ["[Peer]", f"PublicKey = {key}", f"AllowedIPs = {allowed}", ""]
    return "\n".join(lines)


def changed(peers: dict[str, str], fraction: float = 0.01) -> dict[str, str]:
    """The same set with ``fraction`` replaced: half removed, as many new ones added."""
    count = max(2, int(len(peers) * fraction)) // 2
    keep = dict(list(peers.items())[count:])
    keep.update(make_peers(count, start=len(peers) + 10))
    return keep


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


class Interface:
    """One wireguard-go interface in its own namespace, loaded and changed with ``wg``."""

    def __init__(self, topo: Topology) -> None:
        self.ns = topo.netns("peers")
        self.name = unique_name("wgp")
        topo.wireguard(self.ns, self.name)
        self.private_key = run(["wg", "genkey"]).stdout.strip()

    def wg(self, *args: str, **kw):
        return self.ns.run("wg", *args, timeout=600, **kw)

    def setconf(self, peers: dict[str, str]) -> float:
        return self._with_file("setconf", peers)

    def syncconf(self, peers: dict[str, str]) -> float:
        return self._with_file("syncconf", peers)

    def _with_file(self, verb: str, peers: dict[str, str]) -> float:
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as handle:
            handle.write(config_text(self.private_key, peers))
        try:
            return timed(lambda: self.wg(verb, self.name, handle.name))
        finally:
            Path(handle.name).unlink()

    def set_each(self, old: dict[str, str], new: dict[str, str]) -> float:
        """One ``wg set`` process per changed peer."""

        def apply() -> None:
            for key in old.keys() - new.keys():
                self.wg("set", self.name, "peer", key, "remove")
            for key in new.keys() - old.keys():
                self.wg("set", self.name, "peer", key, "allowed-ips", new[key])

        return timed(apply)

    def peer_count(self) -> int:
        return len(self.wg("show", self.name, "peers").stdout.split())


def agent_delta(iface: Interface, old: dict[str, str], new: dict[str, str]) -> float:
    """The agent's way: the control plane sends only the changes; plan + one UAPI batch."""
    from node_daemon.peers import owners_of, plan
    from node_daemon.wg.uapi import UapiDriver

    pools = [POOL, ipaddress.IPv6Network("fd49:4452:4100::/64")]
    changes = [{"public_key": k, "allowed_ips": [v]} for k, v in new.items() if k not in old]
    removed = [k for k in old if k not in new]
    owners = owners_of(old)  # kept up to date by the agent between cycles

    def apply() -> None:
        result = plan(changes, removed, old, pools, full=False, owners=owners)
        UapiDriver(iface.name).apply(result.upserts, result.removes)

    return timed(apply)


def run_apply(sizes: list[int]) -> list[dict[str, float]]:
    """Per size: full load, then a 1 % change three ways on the same interface."""
    rows = []
    for size in sizes:
        with Topology("bpeers") as topo:
            iface = Interface(topo)
            peers = make_peers(size)
            load = iface.setconf(peers)
            step1 = changed(peers)
            agent = agent_delta(iface, peers, step1)
            step2 = changed(step1)
            syncconf = iface.syncconf(step2)
            step3 = changed(step2)
            each = iface.set_each(step2, step3)
            if iface.peer_count() != size:
                raise RuntimeError(f"interface holds {iface.peer_count()} peers, not {size}")
        rows.append(
            {
                "peers": size,
                "load_s": load,
                "agent_s": agent,
                "syncconf_s": syncconf,
                "set_each_s": each,
                "changed": len(step1.keys() - peers.keys()) * 2,
            }
        )
    return rows


def run_plan_in_memory(sizes: list[int]) -> list[dict[str, float]]:
    """The agent's own work without an interface: validate a full list and plan a 1 %
    delta, at sizes beyond wireguard-go's 65,536-peer limit."""
    from node_daemon.peers import owners_of, plan

    pools = [POOL, ipaddress.IPv6Network("fd49:4452:4100::/64")]
    rows = []
    for size in sizes:
        live = make_peers(size)
        incoming = [{"public_key": k, "allowed_ips": [v]} for k, v in live.items()]
        full = timed(lambda: plan(incoming, [], {}, pools, full=True))  # noqa: B023
        step = changed(live)
        changes = [{"public_key": k, "allowed_ips": [v]} for k, v in step.items() if k not in live]
        removed = [k for k in live if k not in step]
        owners = owners_of(live)
        delta = timed(lambda: plan(changes, removed, live, pools, full=False, owners=owners))  # noqa: B023
        rows.append({"peers": size, "validate_full_s": full, "plan_delta_s": delta})
    return rows
