"""The lab's DNS blocklist server on loopback, for canary tests."""

from __future__ import annotations

from dnslib.server import DNSServer

from idra.lab.services import Blocklist, start_dnsbl


def start(zone: str) -> tuple[DNSServer, dict[str, str], Blocklist, str]:
    """A server, the address → behaviour map it answers from, its resolver, HOST:PORT."""
    behaviours: dict[str, str] = {}
    server = start_dnsbl(zone, lambda: behaviours)
    return (
        server,
        behaviours,
        server.server.resolver,
        f"127.0.0.1:{server.server.server_address[1]}",
    )
