"""DNS blocklist lookups of node addresses (dnspython).

An answer in 127.0.0.0/8 means "listed", except 127.255.255.0/24, with which list
operators say "query refused, rate limited or from an open resolver": that is an
error, as is a timeout. Only a real listing may ever drain a node.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from enum import StrEnum

import dns.exception
import dns.resolver
import dns.reversename

DEFAULT_ZONES = ("zen.spamhaus.org",)
_REFUSED = ipaddress.IPv4Network("127.255.255.0/24")
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


class Verdict(StrEnum):
    LISTED = "listed"
    CLEAN = "clean"
    ERROR = "error"


@dataclass(frozen=True)
class Check:
    """One reputation check of one node: a blocklist zone or an HTTP probe."""

    name: str
    verdict: Verdict
    detail: str = ""


def query_name(address: str, zone: str) -> str:
    """``2.0.0.127.zen.spamhaus.org.`` style name (nibbles for IPv6)."""
    reverse = dns.reversename.from_address(address).to_text(omit_final_dot=True)
    reverse = reverse.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
    return f"{reverse}.{zone}."


def check(address: str, zone: str, resolver: dns.resolver.Resolver) -> Check:
    """Look ``address`` up in one blocklist ``zone``."""
    try:
        answer = resolver.resolve(query_name(address, zone), "A")
    except dns.resolver.NXDOMAIN:
        return Check(zone, Verdict.CLEAN)
    except dns.resolver.NoAnswer:
        return Check(zone, Verdict.CLEAN)
    except dns.exception.Timeout:
        return Check(zone, Verdict.ERROR, "timeout")
    except dns.exception.DNSException as exc:
        return Check(zone, Verdict.ERROR, type(exc).__name__)
    codes = [ipaddress.IPv4Address(rr.address) for rr in answer]
    if any(code in _REFUSED for code in codes):
        return Check(zone, Verdict.ERROR, f"refused by the list ({codes[0]})")
    if any(code in _LOOPBACK for code in codes):
        return Check(zone, Verdict.LISTED, ",".join(map(str, codes)))
    return Check(zone, Verdict.ERROR, f"unexpected answer {codes[0]}")


def parse_nameserver(text: str) -> tuple[list[str], int]:
    """``HOST``, ``HOST:PORT``, ``V6`` or ``[V6]:PORT`` → (IP addresses, port); a host name
    is resolved once (all its addresses). Raises ValueError with a one-line message."""
    host, port_text = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") or "53"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--nameserver {text}: port {port_text!r} is not 1-65535")
    try:
        return [str(ipaddress.ip_address(host))], int(port_text)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        raise ValueError(f"--nameserver {text}: cannot resolve {host!r}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos)), int(port_text)


def make_resolver(nameserver: str | None = None, timeout: float = 3.0) -> dns.resolver.Resolver:
    """The system resolver, or ``HOST``, ``HOST:PORT`` or ``[V6]:PORT``."""
    resolver = dns.resolver.Resolver(configure=nameserver is None)
    if nameserver:
        hosts, port = parse_nameserver(nameserver)
        resolver.nameservers = hosts
        resolver.port = port
    resolver.timeout = resolver.lifetime = timeout
    return resolver
