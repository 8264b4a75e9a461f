"""Prometheus metrics on loopback: aggregates only, never a per-peer label or value."""

from __future__ import annotations

import ipaddress

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.peers = Gauge("idra_agent_peers", "Peers on the interface", registry=registry)
        self.active_peers = Gauge(
            "idra_agent_active_peers", "Peers with a handshake in the last 180 s", registry=registry
        )
        self.draining = Gauge("idra_agent_draining", "1 while the node drains", registry=registry)
        self.unauthorized = Gauge(
            "idra_agent_unauthorized",
            "1 while the control plane refuses our token",
            registry=registry,
        )
        self.peer_changes = Counter(
            "idra_agent_peer_changes",
            "Peers added, updated, removed",
            ["change"],
            registry=registry,
        )
        self.rejected = Counter(
            "idra_agent_peers_rejected",
            "Peers refused by validation",
            ["reason"],
            registry=registry,
        )
        self.syncs = Counter("idra_agent_syncs", "Peer syncs", ["result"], registry=registry)
        self.heartbeats = Counter("idra_agent_heartbeats", "Heartbeats sent", registry=registry)
        self.api_bytes = Counter(
            "idra_agent_api_bytes",
            "Bytes exchanged with the control plane",
            ["direction"],
            registry=registry,
        )
        self.last_sync = Gauge(
            "idra_agent_last_sync_timestamp_seconds", "Last successful sync", registry=registry
        )
        self.integrity_ok = Gauge(
            "idra_agent_integrity_ok",
            "1 when the ruleset and the sysctl values are known and match",
            registry=registry,
        )
        self.integrity_unknown = Gauge(
            "idra_agent_integrity_unknown",
            "1 while the ruleset or the sysctl values cannot be read",
            registry=registry,
        )
        self.faults = Counter(
            "idra_agent_faults",
            "Failed calls to a dependency (control plane, IMDS, AWS, WireGuard), by kind",
            ["dependency", "kind"],
            registry=registry,
        )
        self.registrations = Counter(
            "idra_agent_registrations", "Registrations with the control plane", registry=registry
        )
        self.root_readonly = Gauge(
            "idra_agent_root_readonly", "1 when the root filesystem is read-only", registry=registry
        )

        self.retired = Gauge(
            "idra_agent_retired",
            "1 once the control plane retired this node (its peers removed, no sync)",
            registry=registry,
        )

    def serve(self, address: str) -> None:
        """Serve on ``address`` (checked by :func:`parse_address`); OSError if in use."""
        host, port = parse_address(address)
        start_http_server(port, addr=host, registry=self.registry)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9586``) on loopback; ValueError says what is wrong."""
    host, colon, port = address.rpartition(":")
    if not colon or not host or not (port.isascii() and port.isdigit()):
        raise ValueError("expected HOST:PORT")
    if int(port) > 65535:
        raise ValueError("port out of range (0-65535)")
    host = host.removeprefix("[").removesuffix("]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not loopback:
        raise ValueError("metrics are served on loopback only")
    return host, int(port)
