"""``node-daemon run`` with the WireGuard interface replaced by a dict, for peer counts
wireguard-go cannot hold (it stops at 65,536). Everything else is the real agent: CLI,
HTTP client, validation, delta planning, state, metrics.

    python -m bench.memory_agent run --api-url ... (the flags of node-daemon run)
"""

from __future__ import annotations

import node_daemon.wg
from bench.keys import random_key
from node_daemon.cli import main
from node_daemon.wg import Device, PeerState


class MemoryDriver:
    """Holds the peers like an interface would; costs what a dict costs."""

    def __init__(self, interface: str) -> None:
        self.device = Device(has_private_key=False, listen_port=0)
        self.key = random_key()

    def read(self) -> Device:
        return self.device

    def public_key(self) -> str:
        return self.key

    def configure(self, private_key: str | None, listen_port: int) -> None:
        self.device.has_private_key = self.device.has_private_key or private_key is not None
        self.device.listen_port = listen_port

    def apply(self, upserts: dict[str, str], removes: list[str]) -> None:
        for key in removes:
            self.device.peers.pop(key, None)
        for key, ips in upserts.items():
            self.device.peers[key] = PeerState(ips)


if __name__ == "__main__":
    node_daemon.wg.make_driver = lambda kind, interface: MemoryDriver(interface)
    main()
