"""The WireGuard cross-platform userspace API over its unix socket (keys in hex)."""

from __future__ import annotations

import base64
import socket
import subprocess
from collections.abc import Iterator

from node_daemon.wg import UAPI_DIR, Device, PeerState


class UapiError(RuntimeError):
    pass


def _hex(key: str) -> str:
    return base64.b64decode(key).hex()


def _b64(hex_key: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_key)).decode()


class UapiDriver:
    def __init__(self, interface: str) -> None:
        self.path = UAPI_DIR / f"{interface}.sock"

    def _call(self, request: str) -> list[str]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(self.path))
            sock.sendall(request.encode())
            chunks, tail = [], b""
            while not tail.endswith(b"\n\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                tail = (tail + chunk)[-2:]
        lines = b"".join(chunks).decode().splitlines()
        errno = next((line for line in reversed(lines) if line.startswith("errno=")), "errno=?")
        if errno != "errno=0":
            raise UapiError(f"{self.path.name}: {errno}")
        return [line for line in lines if line and not line.startswith("errno=")]

    def _stream(self, request: str) -> Iterator[str]:
        """The reply's lines as they arrive (never the whole dump in memory); the
        closing ``errno`` is checked at the end."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(self.path))
            sock.sendall(request.encode())
            with sock.makefile("rb", buffering=1 << 16) as stream:
                errno = "errno=?"
                for raw in stream:
                    line = raw.rstrip(b"\n").decode()
                    if not line:
                        break
                    if line.startswith("errno="):
                        errno = line
                    else:
                        yield line
        if errno != "errno=0":
            raise UapiError(f"{self.path.name}: {errno}")

    def _items(self) -> Iterator[tuple[str, object]]:
        """("private_key", bool), ("listen_port", int) and ("peer", (key, state)), each
        peer once its last line has been read."""
        key: str | None = None
        peer, ips = PeerState(""), []
        for line in self._stream("get=1\n\n"):
            name, _, value = line.partition("=")
            if name == "public_key":
                if key is not None:
                    peer.allowed_ips = ",".join(sorted(ips))
                    yield "peer", (key, peer)
                key, peer, ips = _b64(value), PeerState(""), []
            elif name == "private_key":
                yield "private_key", value.strip("0") != ""
            elif name == "listen_port":
                yield "listen_port", int(value)
            elif key is None:
                continue
            elif name == "allowed_ip":
                ips.append(value)
            elif name == "last_handshake_time_sec":
                peer.last_handshake = int(value)
            elif name == "rx_bytes":
                peer.rx_bytes = int(value)
            elif name == "tx_bytes":
                peer.tx_bytes = int(value)
        if key is not None:
            peer.allowed_ips = ",".join(sorted(ips))
            yield "peer", (key, peer)

    def read(self) -> Device:
        device = Device(has_private_key=False, listen_port=0)
        for kind, value in self._items():
            if kind == "peer":
                key, state = value
                device.peers[key] = state
            elif kind == "private_key":
                device.has_private_key = bool(value)
            else:
                device.listen_port = int(value)
        return device

    def peers(self) -> Iterator[tuple[str, PeerState]]:
        for kind, value in self._items():
            if kind == "peer":
                yield value

    def public_key(self) -> str:
        private = next(
            (line[12:] for line in self._call("get=1\n\n") if line.startswith("private_key=")), ""
        )
        result = subprocess.run(
            ["wg", "pubkey"], input=_b64(private), capture_output=True, text=True, check=True
        )
        return result.stdout.strip()

    def configure(self, private_key: str | None, listen_port: int) -> None:
        lines = ["set=1"]
        if private_key:
            lines.append(f"private_key={_hex(private_key)}")
        lines.append(f"listen_port={listen_port}")
        self._call("\n".join(lines) + "\n\n")

    def apply(self, upserts: dict[str, str], removes: list[str]) -> None:
        lines = ["set=1"]
        for key in removes:
            lines += [f"public_key={_hex(key)}", "remove=true"]
        for key, ips in upserts.items():
            lines += [f"public_key={_hex(key)}", "replace_allowed_ips=true"]
            lines += [f"allowed_ip={ip}" for ip in ips.split(",") if ip]
        if len(lines) > 1:
            self._call("\n".join(lines) + "\n\n")
