"""``node-daemon run`` with the WireGuard interface replaced by a dict, for peer counts
wireguard-go cannot hold (it stops at 65,536). Everything else is the real agent: CLI,
HTTP client, validation, delta planning, state, metrics.

    python -m bench.memory_agent run --api-url ... (the flags of node-daemon run)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import node_daemon.cli
import node_daemon.host
import node_daemon.wg
from bench.keys import random_key
from node_daemon.cli import main
from node_daemon.wg import Device, PeerState


class MemoryDriver:
    """Holds the peers like an interface would (key → allowed IPs, the strings the agent
    already holds): what the kernel keeps is not the agent's memory, so the stand-in
    costs one dict, no per-peer objects."""

    def __init__(self, interface: str) -> None:
        self.has_key, self.port = False, 0
        self.peers_: dict[str, str] = {}
        self.key = random_key()

    def read(self) -> Device:
        device = Device(has_private_key=self.has_key, listen_port=self.port)
        device.peers = {key: PeerState(ips) for key, ips in self.peers_.items()}
        return device

    def peers(self) -> Iterator[tuple[str, PeerState]]:
        for key, ips in list(self.peers_.items()):  # streamed, as from the UAPI socket
            yield key, PeerState(ips)

    def public_key(self) -> str:
        return self.key

    def configure(self, private_key: str | None, listen_port: int) -> None:
        self.has_key = self.has_key or private_key is not None
        self.port = listen_port

    def apply(self, upserts: dict[str, str], removes: list[str]) -> None:
        for key in removes:
            self.peers_.pop(key, None)
        self.peers_.update(upserts)


def _addresses(interface: str, netns: str | None = None) -> list:
    """The tunnel addresses a booted node's interface has."""
    return [ipaddress.ip_interface("10.96.0.1/12"), ipaddress.ip_interface("fd49:4452:4100::1/64")]


if __name__ == "__main__":
    node_daemon.wg.make_driver = lambda kind, interface: MemoryDriver(interface)
    node_daemon.host.interface_addresses = _addresses
    node_daemon.cli.existing_interface = lambda interface, driver: interface  # no real one
    main()
