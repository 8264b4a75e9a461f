"""Kernel WireGuard through the ``wg`` tool: many peers per invocation, never one
process per peer. Works on any interface ``wg`` can reach (kernel or userspace).

No key ever appears on a command line (``/proc/*/cmdline`` is world-readable): keys and
peers go through stdin (``wg addconf``, ``wg syncconf``, ``private-key /dev/stdin``)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

from node_daemon.wg import Device, PeerState

BATCH = 2000  # peers per ``wg addconf`` call


class WgToolDriver:
    def __init__(self, interface: str) -> None:
        self.interface = interface

    def _wg(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            ["wg", *args], input=stdin, capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"wg {args[0]} {self.interface}: {result.stderr.strip()}")
        return result.stdout

    def read(self) -> Device:
        lines = self._wg("show", self.interface, "dump").splitlines()
        private, _, port, _ = lines[0].split("\t")
        device = Device(has_private_key=private != "(none)", listen_port=int(port))
        for line in lines[1:]:
            key, _, _, ips, handshake, rx, tx, _ = line.split("\t")
            ips = "" if ips == "(none)" else ips
            device.peers[key] = PeerState(
                ",".join(sorted(ips.split(","))) if ips else "", int(handshake), int(rx), int(tx)
            )
        return device

    def peers(self) -> Iterator[tuple[str, PeerState]]:
        with subprocess.Popen(
            ["wg", "show", self.interface, "dump"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        ) as wg:  # fmt: skip
            lines = iter(wg.stdout or ())
            next(lines, None)  # the interface line
            for line in lines:
                key, _, _, ips, handshake, rx, tx, _ = line.rstrip("\n").split("\t")
                ips = "" if ips == "(none)" else ",".join(sorted(ips.split(",")))
                yield key, PeerState(ips, int(handshake), int(rx), int(tx))
        if wg.returncode != 0:
            raise RuntimeError(f"wg show {self.interface} dump: exit {wg.returncode}")

    def public_key(self) -> str:
        return self._wg("show", self.interface, "public-key").strip()

    def configure(self, private_key: str | None, listen_port: int) -> None:
        args = ["set", self.interface, "listen-port", str(listen_port)]
        if private_key:
            args += ["private-key", "/dev/stdin"]
        self._wg(*args, stdin=private_key)

    def apply(self, upserts: dict[str, str], removes: list[str]) -> None:
        if removes:  # the configuration without them; syncconf changes only the difference
            gone = set(removes)
            sections = self._wg("showconf", self.interface).split("\n\n")
            kept = [s for s in sections if _peer_key(s) not in gone]
            self._wg("syncconf", self.interface, "/dev/stdin", stdin="\n\n".join(kept))
        items = list(upserts.items())
        for start in range(0, len(items), BATCH):
            conf = "".join(
                f"[Peer]\nPublicKey = {key}\nAllowedIPs = {ips}\n\n"
                for key, ips in items[start : start + BATCH]
            )  # addconf replaces the allowed IPs of a peer it names
            self._wg("addconf", self.interface, "/dev/stdin", stdin=conf)


def _peer_key(section: str) -> str | None:
    for line in section.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "PublicKey":
            return value.strip()
    return None
