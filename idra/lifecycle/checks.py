"""What the canary checks on one node, shared by ``idra canary`` and the ops loop's canary
pass: every DNS blocklist, then (with a probes file) the egress check and each probe,
made through the canary's own WireGuard tunnel to the node (:mod:`idra.lifecycle.tunnel`)
or from a ``--probe-source`` address given for that node."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idra.lifecycle.api import ApiError, OperatorApi
from idra.lifecycle.dnsbl import Check, Verdict, check
from idra.lifecycle.identity import load_or_create
from idra.lifecycle.probes import Target, load_probes, probe
from idra.lifecycle.tunnel import probe_through, sweep

log = logging.getLogger("idra.canary")


@dataclass
class Probing:
    """The probes and how they reach a node; ``keys`` is None when no tunnel is made."""

    targets: list[Target]
    keys: tuple[str, str] | None  # the canary's WireGuard (private, public) key
    whoami: str
    handshake_timeout: float = 10
    dns: str | None = None  # the DNS server inside the tunnels
    sources: dict[str, str] = field(default_factory=dict)  # node id or ip → local address


def probing(probes: Path, key_file: Path | None, whoami: str, handshake_timeout: float,
            dns: str | None, sources: dict[str, str], no_key: str) -> Probing:  # fmt: skip
    """Check the probe settings; ValueError with one line saying what is wrong (``no_key``
    when neither a key file nor a source for every node is given)."""
    targets = load_probes(probes)
    if dns is not None:
        try:
            dns = str(ipaddress.ip_address(dns))
        except ValueError:
            raise ValueError(f"--tunnel-dns {dns}: not an IP address") from None
    if key_file is None:
        if sources:  # only --probe-source nodes can be probed; the others are errors
            return Probing(targets, None, whoami, handshake_timeout, dns, sources)
        raise ValueError(no_key)
    if not re.match(r"^https?://", whoami):
        raise ValueError(f"--whoami-url {whoami}: not an http(s) URL")
    if os.geteuid() != 0:
        raise ValueError("--probes: the tunnels to the nodes need root (network namespaces); "
                         "run with sudo, or give --probe-source for the nodes")  # fmt: skip
    missing = [tool for tool in ("ip", "wg") if not shutil.which(tool)]
    if missing:
        raise ValueError(f"--probes: {' and '.join(missing)} not found (iproute2, "
                         "wireguard-tools)")  # fmt: skip
    keys = load_or_create(key_file)
    return Probing(targets, keys, whoami, handshake_timeout, dns, sources)


class NodeChecks:
    """The checks of one canary pass, callable per node (from worker threads). With
    tunnels, :meth:`begin` first removes what earlier passes left: probe namespaces of a
    crashed canary, and the canary peer on nodes that left the pool; ``peers`` is where
    the canary's peer is set (the caller keeps it between passes)."""

    def __init__(self, api: OperatorApi, zones: Iterable[str], resolver: Any,
                 probing: Probing | None = None) -> None:  # fmt: skip
        self.api, self.zones, self.resolver, self.probing = api, tuple(zones), resolver, probing
        self.peers: set[str] = set()

    def begin(self, nodes: list[dict[str, Any]], peers: set[str]) -> None:
        self.peers = set(peers)
        if self.probing and self.probing.keys:
            sweep()
            self.peers -= _remove_peers(self.api, self.peers - {n["id"] for n in nodes})

    def __call__(self, node: dict[str, Any]) -> list[Check]:
        results = [check(node["public_ip"], zone, self.resolver) for zone in self.zones]
        if self.probing is None:
            return results
        source = self.probing.sources.get(node["id"]) or self.probing.sources.get(node["public_ip"])
        if source:
            return results + [probe(target, source) for target in self.probing.targets]
        return results + self._through_tunnel(node)  # the egress check alone proves it

    def _through_tunnel(self, node: dict[str, Any]) -> list[Check]:
        settings = self.probing
        if settings.keys is None:
            return [Check("tunnel", Verdict.ERROR, "no canary key: give --key-file")]
        try:
            peer = self.api.canary_peer(node["id"], settings.keys[1])
        except ApiError as exc:
            return [Check("tunnel", Verdict.ERROR, f"canary peer: {exc}")]
        self.peers.add(node["id"])
        return probe_through(peer, settings.keys[0], node, settings.targets, settings.whoami,
                             settings.handshake_timeout, settings.dns)  # fmt: skip


def _remove_peers(api: OperatorApi, node_ids: set[str]) -> set[str]:
    """Remove the canary peer from nodes that left the pool; those done (others retry)."""
    done = set()
    for node_id in node_ids:
        try:
            api.remove_canary(node_id)
        except ApiError as exc:
            log.warning("canary peer of %s not removed yet: %s", node_id, exc,
                        extra={"event": "canary.peer_kept", "node_id": node_id})  # fmt: skip
            continue
        done.add(node_id)
    return done
