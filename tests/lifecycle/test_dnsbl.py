"""DNSBL verdicts against a real DNS server on loopback."""

from __future__ import annotations

import pytest

from idra.lifecycle.dnsbl import Verdict, check, make_resolver, query_name

from .dns_server import start

ZONE = "zen.test.example"


@pytest.fixture(scope="module")
def dnsbl():
    server, behaviours, blocklist, address = start(ZONE)
    yield behaviours, blocklist, make_resolver(address, timeout=0.5)
    server.stop()


def test_query_names() -> None:
    assert query_name("203.0.113.7", ZONE) == f"7.113.0.203.{ZONE}."
    assert query_name("2001:db8::1", ZONE).startswith("1.0.0.0.0.0.0.0.")
    assert query_name("2001:db8::1", ZONE).endswith(f"8.b.d.0.1.0.0.2.{ZONE}.")


@pytest.mark.parametrize(
    ("address", "behaviour", "verdict"),
    [
        ("203.0.113.10", "listed", Verdict.LISTED),
        ("203.0.113.11", None, Verdict.CLEAN),
        ("203.0.113.12", "refused", Verdict.ERROR),
        ("203.0.113.13", "timeout", Verdict.ERROR),
        ("2001:db8::10", "listed", Verdict.LISTED),
        ("2001:db8::11", None, Verdict.CLEAN),
    ],
)
def test_verdicts(dnsbl, address: str, behaviour: str | None, verdict: Verdict) -> None:
    behaviours, blocklist, resolver = dnsbl
    if behaviour:
        behaviours[address] = behaviour
    before = blocklist.queries
    result = check(address, ZONE, resolver)
    assert result.verdict is verdict, result
    assert blocklist.queries > before, "the server must have been asked"


def test_refusal_is_reported_as_such(dnsbl) -> None:
    behaviours, _, resolver = dnsbl
    behaviours["203.0.113.20"] = "refused"
    assert "refused" in check("203.0.113.20", ZONE, resolver).detail


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:5353", "127.0.0.1", 5353), ("[::1]:53", "::1", 53), ("10.0.0.2", "10.0.0.2", 53)],
)
def test_nameserver_option(text: str, host: str, port: int) -> None:
    resolver = make_resolver(text)
    assert resolver.nameservers == [host] and resolver.port == port
