"""A scripted control plane (Node API v1, ARCHITECTURE §3) and a scripted IMDSv2 stand-in
that answer correctly, or fail in a chosen way, on demand. For the fault-injection test
and the soak (bench/soak.py); loopback only.

Faults (``server.fault = name``; ``None`` = healthy):
- both: ``down`` (listener closed: connection refused), ``reset`` (connection closed
  without a reply), ``http_500``, ``http_503``, ``http_429``, ``http_400``, ``redirect``
  (302 elsewhere), ``html`` (HTML with 200), ``oversized`` (a body over the agent's cap),
  ``trickle`` (a valid reply, one byte every ``trickle_gap`` s), ``trickle_head``.
- control plane: ``list`` (``[]``), ``empty`` (``{}``), ``wrong_types``, ``missing_keys``,
  ``too_many_peers``, ``forget`` (404 for the node: it must register again),
  ``bad_register`` (interval and pool of the wrong type), ``bad_interval`` (0 s),
  ``wide_pool`` (pool ``0.0.0.0/0``, ``::/0``, and peers at metadata, loopback, the
  node's own and network addresses), ``bad_keys`` (all-zero key, the node's own key,
  a second spelling of a live key), ``all_rejected`` (a full list within the cap of
  which no entry is usable: refused, the peers stay).
- IMDS: ``refuse_token`` (401 on every read).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

POOL = {"ipv4": "10.96.0.0/12", "ipv6": "fd49:4452:4100::/64"}
NODE_ADDRESSES = ("10.96.0.1/12", "fd49:4452:4100::1/64")  # the interface's own
COMMON = ("down", "reset", "http_500", "http_503", "http_429", "http_400", "redirect",
          "html", "oversized", "trickle", "trickle_head")  # fmt: skip
CP_FAULTS = (*COMMON, "list", "empty", "wrong_types", "missing_keys", "too_many_peers",
             "forget", "bad_register", "bad_interval", "wide_pool", "bad_keys",
             "all_rejected")  # fmt: skip
IMDS_FAULTS = (*COMMON, "refuse_token")
# the fault counter (idra_agent_faults_total{kind}) each fault must move; None: none
EXPECTED_KIND = {
    "down": "transport", "reset": "transport", "http_500": "http_5xx", "http_503": "http_5xx",
    "http_429": "throttled", "http_400": "http_4xx", "redirect": "redirect",
    "html": "malformed", "oversized": "oversized", "trickle": "timeout",
    "trickle_head": "timeout", "list": "malformed", "empty": "malformed",
    "wrong_types": "malformed", "missing_keys": "malformed", "too_many_peers": "oversized",
    "forget": "not_found", "bad_register": "malformed", "bad_interval": None,
    "wide_pool": None, "bad_keys": None, "all_rejected": "malformed",
    "refuse_token": "refused",
}  # fmt: skip


def random_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def respell(key: str) -> str:
    """Another base64 spelling of the same 32 bytes (a padding bit set)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return key[:42] + alphabet[alphabet.index(key[42]) ^ 1] + "="


class Scripted:
    """An HTTP server on 127.0.0.1 whose replies a subclass scripts."""

    trickle_gap = 0.4

    def __init__(self, oversize: int = 1 << 20) -> None:
        self.fault: str | None = None
        self.oversize = oversize
        self.requests = 0
        self.lock = threading.Lock()
        self._server = self._listen(0)
        self.port = self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self, port: int) -> http.server.ThreadingHTTPServer:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def set_fault(self, fault: str | None) -> None:
        if fault == "down" and self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        elif fault != "down" and self._server is None:
            self._server = self._listen(self.port)
        self.fault = fault

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def answer(self, method: str, path: str, query: dict, body: Any, headers) -> tuple[int, Any]:
        raise NotImplementedError

    def _handler(self):
        scripted = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                scripted.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                fault = scripted.fault
                if fault == "reset":
                    self.close_connection = True
                    return
                status, reply = {
                    "http_500": (500, "oops"), "http_503": (503, "busy"),
                    "http_429": (429, "slow down"), "http_400": (400, "no"),
                    "redirect": (302, ""), "html": (200, "<html>maintenance</html>"),
                    "oversized": (200, "x" * scripted.oversize),
                }.get(fault, (None, None))  # fmt: skip
                if status is None:
                    url = urlparse(self.path)
                    with scripted.lock:
                        status, reply = scripted.answer(
                            method, url.path, parse_qs(url.query), body, self.headers
                        )
                data = reply if isinstance(reply, str) else json.dumps(reply)
                data = data.encode()
                head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\n"
                head += "Location: http://127.0.0.1:9/elsewhere\r\n" if status == 302 else ""
                head += "Content-Type: application/json\r\nConnection: close\r\n\r\n"
                if fault in ("trickle", "trickle_head"):
                    first = head.encode() if fault == "trickle" else b""
                    rest = data if fault == "trickle" else head.encode() + data
                    self.wfile.write(first)
                    for i in range(len(rest)):
                        if scripted.fault != fault:
                            break  # the fault ended: hang up
                        self.wfile.write(rest[i : i + 1])
                        self.wfile.flush()
                        time.sleep(scripted.trickle_gap)
                    self.close_connection = True
                    return
                self.wfile.write(head.encode() + data)
                self.close_connection = True

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def log_message(self, *args) -> None:
                pass

            def handle(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    super().handle()

        return Handler


class ScriptedControlPlane(Scripted):
    """The node's view of a control plane: one node, a desired peer set, a version."""

    def __init__(self, oversize: int = 1 << 20) -> None:
        super().__init__(oversize)
        self.desired: dict[str, list[str]] = {}  # key → allowed IPs
        self.version = 1
        self.node_ids: set[str] = set()
        self.node_key: str | None = None
        self.registrations = 0
        self.too_many = 2000  # peers in a ``too_many_peers`` reply: over the agent's cap
        self.drain = False  # the heartbeat's drain flag (reason "manual")

    def set_peers(self, desired: dict[str, list[str]]) -> None:
        with self.lock:
            self.desired = dict(desired)
            self.version += 1

    def set_fault(self, fault: str | None) -> None:
        if fault in ("forget", "bad_register", "bad_interval", "wide_pool"):
            self.node_ids.clear()  # these act at (re-)registration
        super().set_fault(fault)

    def _peers(self) -> list[dict]:
        peers = [{"public_key": k, "allowed_ips": ips} for k, ips in self.desired.items()]
        if self.fault == "wide_pool":
            for ip in ("169.254.169.254/32", "127.0.0.1/32", "10.96.0.1/32", "10.96.0.0/32",
                       "10.111.255.255/32", "fd49:4452:4100::1/128"):  # fmt: skip
                peers.append({"public_key": random_key(), "allowed_ips": [ip]})
        if self.fault == "bad_keys":
            zero = base64.b64encode(bytes(32)).decode()
            peers.append({"public_key": zero, "allowed_ips": ["10.96.7.1/32"]})
            peers.append({"public_key": self.node_key, "allowed_ips": ["10.96.7.2/32"]})
            for key in list(self.desired)[:1]:
                peers.append({"public_key": respell(key), "allowed_ips": ["10.96.7.3/32"]})
        return peers

    def answer(self, method, path, query, body, headers):
        fault = self.fault
        if method == "POST" and path == "/v1/nodes":
            if fault == "bad_register":
                return 201, {"node_id": "node-1", "heartbeat_interval_s": "10", "client_pool": []}
            self.registrations += 1
            self.node_ids.add("node-1")
            if isinstance(body, dict):
                self.node_key = body.get("public_key")
            pool = {"ipv4": "0.0.0.0/0", "ipv6": "::/0"} if fault == "wide_pool" else POOL
            interval = 0 if fault == "bad_interval" else 10
            return 201, {
                "node_id": "node-1",
                "node_credential": "scripted-" + os.urandom(16).hex(),
                "heartbeat_interval_s": interval,
                "client_pool": pool,
            }
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["v1", "nodes"] or parts[2] not in self.node_ids:
            return 404, {"detail": "no such node"}
        if fault == "list":
            return 200, []
        if fault == "empty":
            return 200, {}
        if parts[3] == "heartbeat" and method == "POST":
            if fault == "wrong_types":
                return 200, {"drain": "no", "drain_reason": 5, "peers_version": "7"}
            if fault == "missing_keys":
                return 200, {"drain": False}
            return 200, {"drain": self.drain, "drain_reason": "manual" if self.drain else None,
                         "peers_version": self.version}  # fmt: skip
        if parts[3] == "peers" and method == "GET":
            if fault == "wrong_types":
                return 200, {"version": "x", "full": 1, "peers": {}, "removed": None}
            if fault == "missing_keys":
                return 200, {"version": self.version}
            if fault in ("too_many_peers", "all_rejected"):
                count = self.too_many if fault == "too_many_peers" else 50
                junk = [{"public_key": random_key(), "allowed_ips": []} for _ in range(count)]
                return 200, {"version": self.version, "full": True, "peers": junk, "removed": []}
            since = query.get("since", [None])[0]
            if since is not None and int(since) == self.version:
                return 200, {"version": self.version, "full": False, "peers": [], "removed": []}
            return 200, {"version": self.version, "full": True, "peers": self._peers(),
                         "removed": []}  # fmt: skip
        return 404, {"detail": "not found"}


class ScriptedImds(Scripted):
    """IMDSv2: token first, then metadata and the instance identity document."""

    def __init__(self, instance_id: str = "i-0scripted", region: str = "eu-central-1",
                 public_ip: str = "192.0.2.1") -> None:  # fmt: skip
        super().__init__(oversize=200_000)
        self.token = "imds-" + os.urandom(8).hex()
        self.values = {
            "meta-data/instance-id": instance_id,
            "meta-data/placement/region": region,
            "meta-data/public-ipv4": public_ip,
            "meta-data/autoscaling/target-lifecycle-state": "InService",
            "dynamic/instance-identity/document": json.dumps(
                {"instanceId": instance_id, "region": region, "accountId": "123456789012"}
            ),
            "dynamic/instance-identity/signature": base64.b64encode(os.urandom(256)).decode(),
        }

    def answer(self, method, path, query, body, headers):
        if method == "PUT" and path == "/latest/api/token":
            if not headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return 400, ""
            return 200, self.token
        if self.fault == "refuse_token" or headers.get("X-aws-ec2-metadata-token") != self.token:
            return 401, ""
        value = self.values.get(path.removeprefix("/latest/"))
        return (404, "") if value is None else (200, value)
