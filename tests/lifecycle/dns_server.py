"""A real DNS blocklist server on loopback (dnslib) for canary tests."""

from __future__ import annotations

import time

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from idra.lifecycle.dnsbl import query_name


class Blocklist(BaseResolver):
    """Answers per address: ``listed`` 127.0.0.2, ``refused`` 127.255.255.254,
    ``timeout`` never in time, anything else NXDOMAIN."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.answers: dict[str, str] = {}
        self.queries = 0

    def set(self, address: str, behaviour: str) -> None:
        self.answers[query_name(address, self.zone)] = behaviour

    def resolve(self, request, handler):
        self.queries += 1
        reply = request.reply()
        behaviour = self.answers.get(str(request.q.qname))
        if behaviour == "timeout":
            time.sleep(2)
            return None
        codes = {"listed": "127.0.0.2", "refused": "127.255.255.254"}
        if behaviour in codes:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(codes[behaviour]), ttl=5))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class QuietLogger(DNSLogger):
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error,-recv,-send,-data")


def start(zone: str) -> tuple[DNSServer, Blocklist, str]:
    blocklist = Blocklist(zone)
    server = DNSServer(blocklist, address="127.0.0.1", port=0, logger=QuietLogger())
    server.start_thread()
    return server, blocklist, f"127.0.0.1:{server.server.server_address[1]}"
