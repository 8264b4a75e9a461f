"""Node API v1 client. HTTPS only; plain http only to loopback or when allowed.

Registration uses the fleet-wide NODE_TOKEN (plus the node credential once we have
one); every other call uses only this node's credential. Every call has an overall
deadline and a reply-size cap (:mod:`node_daemon.bounded`); every reply is validated
(:mod:`node_daemon.replies`) before the agent uses it.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

import httpx

import node_daemon
from node_daemon import replies
from node_daemon.bounded import BoundedClient, Fault, Reply, sanitize

MAX_PEERS = 1 << 20  # kernel WireGuard's limit per interface
PEER_BYTES = 256  # a listed peer's JSON (key, two addresses, preshared key) fits in this
REPLY_SLACK = 64 << 10  # the reply's other fields


def reply_cap(peers: int) -> int:
    """The bytes a reply of ``peers`` peers needs (no more is read)."""
    return peers * PEER_BYTES + REPLY_SLACK


MAX_REPLY_BYTES = reply_cap(MAX_PEERS)


class Unauthorized(RuntimeError):
    """The control plane refused our token or credential (401)."""


class Refused(RuntimeError):
    """The control plane refused our registration (403 identity, 409 instance bound to
    another credential or retired): this instance needs replacing. ``retired``: its
    record was deleted for good, so it must stop serving."""

    def __init__(self, message: str, retired: bool = False) -> None:
        super().__init__(message)
        self.retired = retired


class NotFound(RuntimeError):
    """The control plane does not know our node (404): register again."""


def is_secure_url(url: str) -> bool:
    """https, or plain http to a loopback host only."""
    parsed = httpx.URL(url)
    if parsed.scheme == "https":
        return True
    if parsed.scheme != "http":
        return False
    if parsed.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(parsed.host).is_loopback
    except ValueError:
        return False


class NodeApi:
    """Register, fetch peers, heartbeat. Counts the bytes it moves (headers included)."""

    def __init__(
        self,
        url: str,
        token_file: Path,
        ca_file: Path | None = None,
        timeout: float = 10,
        deadline: float = 30,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self.token_file = token_file
        self._settings = (url, token_file, ca_file, timeout, deadline, max_reply_bytes, max_peers)
        self.credential: str | None = None  # this node's, from the register reply
        self.max_peers, self.max_bytes = max_peers, max_reply_bytes
        self.bytes_sent = self.bytes_received = 0
        verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = BoundedClient(
            "control_plane",
            url.rstrip("/"),
            verify=verify,
            timeout=timeout,
            deadline=deadline,
            max_bytes=max_reply_bytes,
            headers={"User-Agent": f"node-daemon/{node_daemon.__version__}"},
        )

    def _call(self, method: str, path: str, secret: str, body: Any = None, **kw) -> dict[str, Any]:
        content = b"" if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {secret}", **kw.pop("headers", {})}
        if body is not None:
            headers["Content-Type"] = "application/json"
        reply = self._http.request(method, path, content=content or None, headers=headers, **kw)
        self.bytes_sent += reply.sent_bytes
        self.bytes_received += reply.head_bytes + len(reply.body)
        what = f"{method} {path.rsplit('/', 1)[-1]}"
        status = reply.status
        if status == 401:
            raise Unauthorized(f"{method}: 401 unauthorized")
        if status in (403, 409) and path == "/v1/nodes":
            detail = _detail(reply)
            raise Refused(f"HTTP {status}: {detail}", status == 409 and _retired(detail))
        if status == 404 and path != "/v1/nodes":
            raise NotFound(what)
        if status == 429:
            raise Fault("control_plane", "throttled", what)
        if 300 <= status < 400:
            raise Fault("control_plane", "redirect", f"{what}: HTTP {status}")
        if status >= 500:
            raise Fault("control_plane", "http_5xx", f"{what}: HTTP {status}")
        if status >= 400:
            raise Fault("control_plane", "http_4xx", f"{what}: HTTP {status}")
        if status not in (200, 201):
            raise Fault("control_plane", "malformed", f"{what}: HTTP {status}")
        return reply.json_object("control_plane", what)

    def register(self, body: dict[str, Any]) -> replies.Registration:
        """NODE_TOKEN (re-read: a rotated token needs no restart) and, when we have one,
        our credential: a bound instance is refused without it."""
        try:
            token = self.token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise Fault("token_file", "unreadable", type(exc).__name__) from None
        headers = {"X-Node-Credential": self.credential} if self.credential else {}
        document = self._call("POST", "/v1/nodes", token, body, headers=headers)
        return replies.registration(document)

    def twin(self, extra_s: float) -> NodeApi:
        """Another client (own connection) with the same settings, whose calls may take
        ``extra_s`` seconds longer: for the long-poll thread."""
        url, token_file, ca_file, timeout, deadline, max_bytes, max_peers = self._settings
        return NodeApi(url, token_file, ca_file, timeout + extra_s, deadline + extra_s,
                       max_bytes, max_peers)  # fmt: skip

    def peers(
        self,
        node_id: str,
        since: int | None,
        *,
        wait: float | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> replies.Peers:
        """The delta since ``since`` (held up to ``wait`` s), or a full list: one page of
        ``limit`` (``cursor``: the next). A control plane before sync v2 ignores these;
        one that sends a cursor pages, so a next page may hold ``limit`` peers at most
        (and is read only that far)."""
        most, cap = self.max_peers, {}
        if cursor and limit:
            most, cap = min(limit, most), {"max_bytes": min(reply_cap(limit), self.max_bytes)}
        params: dict[str, Any] = {} if since is None else {"since": since}
        if wait and since is not None:
            params["wait"] = wait
        if limit:
            params["limit"] = limit
        if cursor:
            params["cursor"] = cursor
        document = self._call(
            "GET", f"/v1/nodes/{node_id}/peers", self._credential(), params=params, **cap
        )
        return replies.peers(document, most)

    def heartbeat(self, node_id: str, body: dict[str, Any]) -> replies.Beat:
        reply = self._call("POST", f"/v1/nodes/{node_id}/heartbeat", self._credential(), body)
        return replies.beat(reply)

    def _credential(self) -> str:
        if not self.credential:
            raise Unauthorized("no node credential: register first")
        return self.credential

    def close(self) -> None:
        self._http.close()


def _retired(detail: str) -> bool:
    """The control plane's 409 for an instance whose record was deleted ("instance
    retired"): its document can never register again."""
    return "retired" in detail.lower()


def _detail(reply: Reply) -> str:
    """The control plane's one-line reason (bounded, sanitised; never a credential)."""
    try:
        detail = json.loads(reply.body).get("detail", "")
    except (ValueError, AttributeError, RecursionError):
        detail = ""
    return sanitize(detail, 200) or f"HTTP {reply.status}"
