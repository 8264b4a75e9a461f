"""Probe traffic for namespace tests, run inside a namespace as a script.

``probe.py serve PORT...``  TCP and UDP on every address present at start (v4, v6 and
                            link-local):
                            answers each connection or datagram with its source address.
``probe.py tcp HOST PORT``  connects, prints what the server saw; exit 1 if unreachable.
``probe.py udp HOST PORT [SOURCE_PORT [SOURCE_ADDRESS]]``  sends one datagram (from
                            that port and address), prints the answer; exit 1 on silence.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

TIMEOUT = 1.5
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # linux/in.h (Python 3.12 names it)


def _listen(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    return sock


def _sockaddr(host: str, port: int) -> tuple[int, tuple]:
    """Family and socket address of a numeric host; ``fe80::1%eth0`` keeps its scope."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)[0][4]


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
    family, where = _sockaddr(address, port)
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)  # a link-local address still in DAD
    server.bind(where)
    while True:
        _, peer = server.recvfrom(2048)
        server.sendto(_seen(peer), peer)


def _local_addresses() -> list[str]:
    """Every address here; a link-local one with its interface (``fe80::1%eth0``)."""
    links = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True).stdout)
    return [
        info["local"] + (f"%{link['ifname']}" if info["local"].startswith("fe80:") else "")
        for link in links
        for info in link.get("addr_info", [])
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


def udp(host: str, port: int, source_port: int = 0, source: str = "") -> str | None:
    family, destination = _sockaddr(host, port)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        try:
            if source_port or source:
                sock.bind(_sockaddr(source, source_port)[1] if source else ("", source_port))
            sock.sendto(b"probe", destination)
            return sock.recv(256).decode()
        except OSError:
            return None


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "serve":
        serve([int(port) for port in args])
    if command == "udp":
        answer = udp(args[0], int(args[1]), *[int(a) if a.isdigit() else a for a in args[2:]])
    else:
        answer = tcp(args[0], int(args[1]))
    print(answer or "")
    sys.exit(0 if answer else 1)
