"""Stand-ins for the outside world in the lab, run as processes inside its namespaces.

``python -m idra.lab.services dnsbl --zone Z --listed FILE --listen HOST:PORT``
    a DNS blocklist (dnslib): addresses in FILE (a JSON object address → behaviour:
    ``listed``, ``refused`` or ``timeout``) answer so; all others NXDOMAIN.
``python -m idra.lab.services streaming --listed FILE --listen HOST:PORT``
    an HTTP "streaming service" that answers 403 "proxy detected" to listed addresses.
``python -m idra.lab.services whoami --port PORT``
    a web server "on the internet" that answers with the address it sees.
``python -m idra.lab.services imds --document F --signature F --public-ipv4 IP --listen H:P``
    one node's IMDSv2 stand-in: its identity document signed by the lab's key.
FILE is read at every request, so listing an address takes effect at once.
"""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from idra.lifecycle.dnsbl import query_name

CODES = {"listed": "127.0.0.2", "refused": "127.255.255.254"}


def read_listed(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class Blocklist(BaseResolver):
    """Answers for the addresses ``behaviours()`` returns; NXDOMAIN for the rest."""

    def __init__(self, zone: str, behaviours: Callable[[], dict[str, str]]) -> None:
        self.zone, self.behaviours, self.queries = zone, behaviours, 0

    def resolve(self, request, handler):
        self.queries += 1
        names = {query_name(a, self.zone): b for a, b in self.behaviours().items()}
        behaviour = names.get(str(request.q.qname))
        if behaviour == "timeout":
            time.sleep(5)
            return None
        reply = request.reply()
        if behaviour in CODES:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(CODES[behaviour]), ttl=5))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


def start_dnsbl(zone: str, behaviours, host: str = "127.0.0.1", port: int = 0) -> DNSServer:
    """A running blocklist server (thread); its port is ``server.server.server_address[1]``."""
    quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data")
    server = DNSServer(Blocklist(zone, behaviours), address=host, port=port, logger=quiet)
    server.start_thread()
    return server


def streaming_handler(listed: Callable[[], dict[str, str]]):
    class Streaming(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            blocked = self.client_address[0] in listed()
            body = b"Proxy detected: not available\n" if blocked else b"Now playing\n"
            self.send_response(403 if blocked else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # no client addresses in logs
            pass

    return Streaming


class WhoAmI(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.client_address[0].removeprefix("::ffff:").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class DualStackServer(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


@click.group()
def main() -> None:
    """Lab stand-ins for the outside world."""


@main.command()
@click.option("--zone", required=True)
@click.option("--listed", required=True, type=click.Path(path_type=Path))
@click.option("--listen", required=True)
def dnsbl(zone: str, listed: Path, listen: str) -> None:
    host, port = _host_port(listen)
    start_dnsbl(zone, lambda: read_listed(listed), host, port)
    print("ready", flush=True)
    threading.Event().wait()


@main.command()
@click.option("--listed", required=True, type=click.Path(path_type=Path))
@click.option("--listen", required=True)
def streaming(listed: Path, listen: str) -> None:
    server = http.server.ThreadingHTTPServer(
        _host_port(listen), streaming_handler(lambda: read_listed(listed))
    )
    print("ready", flush=True)
    server.serve_forever()


@main.command()
@click.option("--port", type=int, required=True)
def whoami(port: int) -> None:
    server = DualStackServer(("::", port), WhoAmI)
    print("ready", flush=True)
    server.serve_forever()


@main.command()
@click.option("--document", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--signature", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--public-ipv4", required=True)
@click.option("--listen", required=True)
def imds(document: Path, signature: Path, public_ipv4: str, listen: str) -> None:
    from idra.lab.imds import Instance

    instance = Instance(document.read_text(), signature.read_text(), public_ipv4)
    server = http.server.ThreadingHTTPServer(_host_port(listen), instance.handler())
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
