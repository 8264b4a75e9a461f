"""WireGuard drivers behind one interface: read the device, configure it, apply changes.

- ``uapi``: wireguard-go's (and any userspace implementation's) cross-platform UAPI
  socket, ``/var/run/wireguard/<ifname>.sock``: one ``set`` operation per batch.
- ``kernel``: the ``wg`` tool, many peers per invocation (kernel WireGuard on nodes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

UAPI_DIR = Path("/var/run/wireguard")


@dataclass
class PeerState:
    allowed_ips: str  # comma-separated, sorted: "10.96.0.2/32,fd49::2/128"
    last_handshake: int = 0  # unix seconds, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass
class Device:
    has_private_key: bool
    listen_port: int
    peers: dict[str, PeerState] = field(default_factory=dict)  # base64 public key → state


class Driver(Protocol):
    def read(self) -> Device: ...

    def peers(self) -> Iterator[tuple[str, PeerState]]:
        """The interface's peers one at a time, streamed from the device (the agent's
        periodic scan: memory independent of the peer count)."""

    def public_key(self) -> str:
        """The interface's public key (base64)."""

    def configure(self, private_key: str | None, listen_port: int) -> None:
        """Set the device key (base64; None keeps it) and listen port."""

    def apply(self, upserts: dict[str, str], removes: list[str]) -> None:
        """Add or update peers (key → allowed IPs) and remove peers, in one batch."""


def make_driver(kind: str, interface: str) -> Driver:
    from node_daemon.wg.kernel import WgToolDriver
    from node_daemon.wg.uapi import UapiDriver

    if kind == "auto":
        kind = "uapi" if (UAPI_DIR / f"{interface}.sock").exists() else "kernel"
    return UapiDriver(interface) if kind == "uapi" else WgToolDriver(interface)


def allowed(ips: list[str]) -> str:
    return ",".join(sorted(ips))
