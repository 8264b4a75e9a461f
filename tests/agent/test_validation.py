"""Replies, peers and HTTP bounds, without namespaces (issue 14): a reply of any wrong
shape is a counted fault, never a crash; the pool never trusts the reply alone; keys
have one spelling; every call ends by its deadline and reads at most its cap."""

from __future__ import annotations

import base64
import http.server
import ipaddress
import threading
import time

import pytest

from node_daemon import replies
from node_daemon.bounded import BoundedClient, Fault, sanitize
from node_daemon.peers import (
    ZERO_KEY,
    canary_hosts,
    client_pools,
    is_canary,
    plan,
    reserved_hosts,
    valid_key,
)

from .scripted import random_key, respell

POOL = {"ipv4": "10.96.0.0/12", "ipv6": "fd49:4452:4100::/64"}
NETS = [ipaddress.ip_network(POOL["ipv4"]), ipaddress.ip_network(POOL["ipv6"])]


def _registration(**changes):
    return replies.registration(
        {
            "node_id": "node-1",
            "node_credential": "c" * 43,
            "heartbeat_interval_s": 10,
            "client_pool": POOL,
        }
        | changes
    )


@pytest.mark.parametrize(("given", "used"), [(0, 1), (-5, 1), (1e9, 300), (10, 10), (0.2, 1)])
def test_interval_clamped(given, used) -> None:
    assert _registration(heartbeat_interval_s=given).interval == used


@pytest.mark.parametrize(
    "changes",
    [
        {"heartbeat_interval_s": "10"},
        {"heartbeat_interval_s": True},
        {"heartbeat_interval_s": float("nan")},
        {"heartbeat_interval_s": float("inf")},
        {"node_id": "../nodes"},
        {"node_id": "a/b"},
        {"node_id": 5},
        {"node_id": ""},
        {"client_pool": []},
        {"client_pool": {"ipv4": "fd49::/64", "ipv6": "fd49::/64"}},
        {"client_pool": {"ipv4": "10.96.0.1/12", "ipv6": "fd49::/64"}},
        {"client_pool": {"ipv4": None, "ipv6": "fd49::/64"}},
        {"node_credential": None},
        {"node_credential": "short"},
        {"node_credential": "c" * 40 + "\r\nX: y"},
        {"canary_pool": []},
        {"canary_pool": {"ipv4": "10.111.255.240/28"}},
        {"canary_pool": {"ipv4": "10.111.255.0/24", "ipv6": "fd49::fff0/124"}},  # too wide
        {"canary_pool": {"ipv4": "10.111.255.240/28", "ipv6": "fd49::/64"}},
        {"canary_pool": {"ipv4": "fd49::fff0/124", "ipv6": "10.111.255.240/28"}},
    ],
)
def test_bad_registration_is_malformed(changes) -> None:
    with pytest.raises(Fault) as fault:
        _registration(**changes)
    assert fault.value.kind == "malformed"


def test_canary_block_from_the_registration() -> None:
    """Hosts of the block are the canary (never a user); without the field (an older
    control plane) nothing is."""
    assert _registration().canary == []
    block = {"ipv4": "10.111.255.240/28", "ipv6": "fd49:4452:4100::f:fff0/124"}
    hosts = canary_hosts(_registration(canary_pool=block).canary)
    assert len(hosts) == 32
    assert is_canary("10.111.255.240/32,fd49:4452:4100::f:fff0/128", hosts)
    assert is_canary("fd49:4452:4100::f:ffff/128", hosts)
    assert not is_canary("10.111.255.239/32,fd49:4452:4100::f:ffef/128", hosts)
    assert not is_canary("10.111.255.240/32", frozenset()), "no block: every peer a user"


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"version": True, "full": True, "peers": [], "removed": []},
        {"version": -1, "full": True, "peers": [], "removed": []},
        {"version": 1, "full": 1, "peers": [], "removed": []},
        {"version": 1, "full": True, "peers": {}, "removed": []},
        {"version": 1, "full": True, "peers": [], "removed": None},
    ],
)
def test_bad_peers_reply_is_malformed(doc) -> None:
    with pytest.raises(Fault) as fault:
        replies.peers(doc, 10)
    assert fault.value.kind == "malformed"


def test_peer_count_capped() -> None:
    doc = {"version": 1, "full": True, "peers": [{}] * 11, "removed": []}
    with pytest.raises(Fault) as fault:
        replies.peers(doc, 10)
    assert fault.value.kind == "oversized"
    assert replies.peers(doc | {"peers": [{}] * 10}, 10).version == 1


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"drain": "no", "peers_version": 1},
        {"drain": False, "peers_version": "1"},
        {"drain": False, "drain_reason": 5, "peers_version": 1},
    ],
)
def test_bad_heartbeat_reply_is_malformed(doc) -> None:
    with pytest.raises(Fault):
        replies.beat(doc)


def test_drain_reason_is_sanitised() -> None:
    beat = replies.beat(
        {"drain": True, "drain_reason": "x\n\x1b[31mfake log line", "peers_version": 1}
    )
    assert beat.drain_reason.isprintable() and "\n" not in beat.drain_reason
    assert sanitize("a\r\nb\x00c\u2028d") == "abcd"


def test_keys_have_one_spelling() -> None:
    key = random_key()
    other = respell(key)
    assert other != key and base64.b64decode(other) == base64.b64decode(key)
    assert valid_key(key) and not valid_key(other)
    assert not valid_key(ZERO_KEY)
    live = {key: "10.96.0.2/32"}
    result = plan(
        [{"public_key": key, "allowed_ips": ["10.96.0.2/32"]},
         {"public_key": other, "allowed_ips": ["10.96.0.3/32"]}],
        [], live, NETS, full=True,
    )  # fmt: skip
    assert result.rejected == {"bad public key": 1} and result.unchanged == 1


def test_own_key_and_reserved_hosts_rejected() -> None:
    own_key = random_key()
    pools = client_pools(
        [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")],
        [ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd49:4452:4100::/64")],
    )
    assert [str(p) for p in pools] == ["10.96.0.0/12", "fd49:4452:4100::/64"]
    reserved = reserved_hosts(pools, ["10.96.0.1", "fd49:4452:4100::1"])
    bad = ["169.254.169.254/32", "127.0.0.1/32", "10.96.0.1/32", "10.96.0.0/32",
           "10.111.255.255/32", "fd49:4452:4100::1/128", "fd49:4452:4100::/128"]  # fmt: skip
    incoming = [{"public_key": random_key(), "allowed_ips": [ip]} for ip in bad]
    incoming.append({"public_key": own_key, "allowed_ips": ["10.96.0.9/32"]})
    incoming.append({"public_key": random_key(), "allowed_ips": ["10.96.0.10/32"]})
    result = plan(incoming, [], {}, pools, full=True, own_key=own_key, reserved=reserved)
    assert list(result.upserts.values()) == ["10.96.0.10/32"]
    assert result.rejected == {
        "allowed IP outside the client pool": 2,
        "allowed IP reserved (node or network address)": 5,
        "the node's own key": 1,
    }


def test_pool_intersection() -> None:
    net = ipaddress.ip_network
    assert client_pools([net("10.0.0.0/8")], [net("10.96.0.0/12")]) == [net("10.96.0.0/12")]
    assert client_pools([net("10.96.4.0/24")], [net("10.96.0.0/12")]) == [net("10.96.4.0/24")]
    assert client_pools([net("10.200.0.0/16")], [net("10.96.0.0/12")]) == []
    assert client_pools([net("10.96.0.0/12")], [net("fd49::/64")]) == []


def test_unhashable_entries_do_not_crash() -> None:
    result = plan(
        [{"public_key": ["x"]}, "junk", {"public_key": {"a": 1}, "allowed_ips": "10.96.0.2/32"}],
        [["x"], {"y": 1}, 5], {}, NETS, full=False,
    )  # fmt: skip
    assert result.rejected == {"bad public key": 3} and not result.upserts


# -- HTTP bounds --------------------------------------------------------------------------


class Slow(http.server.BaseHTTPRequestHandler):
    mode = "trickle"

    def do_GET(self) -> None:
        body = b'{"ok": true}' + b" " * 200
        if self.mode == "trickle_head":
            head = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 100 + b"\r\n"
            for i in range(len(head)):
                self.wfile.write(head[i : i + 1])
                self.wfile.flush()
                time.sleep(0.2)
            return
        if self.mode == "chunked":  # no Content-Length: the cap applies while reading
            self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(100):
                self.wfile.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.mode == "redirect":
            self.wfile.write(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n")
            return
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(len(body)):
            self.wfile.write(body[i : i + 1])
            self.wfile.flush()
            time.sleep(0.2)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def slow():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode", ["trickle", "trickle_head"])
def test_trickle_cut_at_the_overall_deadline(slow, mode, monkeypatch) -> None:
    monkeypatch.setattr(Slow, "mode", mode)
    client = BoundedClient("control_plane", slow, timeout=5, deadline=1.0)
    started = time.monotonic()
    with pytest.raises(Fault) as fault:
        client.request("GET", "/")
    assert fault.value.kind == "timeout"
    assert time.monotonic() - started < 1.5, "per-read timeout 5 s, bytes every 0.2 s"


def test_reply_size_capped_while_streaming(slow, monkeypatch) -> None:
    monkeypatch.setattr(Slow, "mode", "chunked")
    with pytest.raises(Fault) as fault:
        BoundedClient("control_plane", slow, max_bytes=10_000).request("GET", "/")
    assert fault.value.kind == "oversized"
    reply = BoundedClient("control_plane", slow, max_bytes=200_000).request("GET", "/")
    assert len(reply.body) == 100 * 1024


def test_redirect_not_followed(slow, monkeypatch) -> None:
    monkeypatch.setattr(Slow, "mode", "redirect")
    assert BoundedClient("control_plane", slow).request("GET", "/").status == 302
