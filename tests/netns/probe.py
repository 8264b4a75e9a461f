"""Probe traffic for namespace tests, run inside a namespace as a script.

``probe.py serve PORT...``  TCP and UDP on every address present at start (v4 and v6):
                            answers each connection or datagram with its source address.
``probe.py tcp HOST PORT``  connects, prints what the server saw; exit 1 if unreachable.
``probe.py udp HOST PORT``  sends one datagram, prints the answer; exit 1 on silence.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

TIMEOUT = 1.5


def _listen(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    return sock


def _seen(address: tuple) -> bytes:
    host = address[0].removeprefix("::ffff:")
    return host.encode()


def _serve_tcp(port: int) -> None:
    server = _listen(socket.SOCK_STREAM, port)
    server.listen(64)
    while True:
        conn, address = server.accept()
        with conn:
            conn.sendall(_seen(address))


def _serve_udp(address: str, port: int) -> None:
    """One socket per local address, so answers leave from the address asked."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((address, port))
    while True:
        _, peer = server.recvfrom(2048)
        server.sendto(_seen(peer), peer)


def _local_addresses() -> list[str]:
    links = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True).stdout)
    return [
        info["local"]
        for link in links
        for info in link.get("addr_info", [])
        if not info["local"].startswith("fe80:")
    ]


def serve(ports: list[int]) -> None:
    addresses = _local_addresses()
    for port in ports:
        threading.Thread(target=_serve_tcp, args=(port,), daemon=True).start()
        for address in addresses:
            threading.Thread(target=_serve_udp, args=(address, port), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def tcp(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
            return conn.recv(256).decode()
    except OSError:
        return None


def udp(host: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        try:
            sock.sendto(b"probe", (host, port))
            return sock.recv(256).decode()
        except OSError:
            return None


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "serve":
        serve([int(port) for port in args])
    answer = {"tcp": tcp, "udp": udp}[command](args[0], int(args[1]))
    print(answer or "")
    sys.exit(0 if answer else 1)
