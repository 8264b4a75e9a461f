"""Node API v1 client (httpx). HTTPS only; plain http only to loopback or when allowed.

Registration uses the fleet-wide NODE_TOKEN (plus the node credential once we have
one); every other call uses only this node's credential."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any

import httpx

import node_daemon


class Unauthorized(RuntimeError):
    """The control plane refused our token or credential (401)."""


class Refused(RuntimeError):
    """The control plane refused our registration (403 identity, 409 instance bound to
    another credential or retired): this instance needs replacing."""


class ApiUnavailable(RuntimeError):
    """The control plane did not answer usefully (network error, timeout, 5xx)."""


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
        self, url: str, token_file: Path, ca_file: Path | None = None, timeout: float = 10
    ):
        self.token_file = token_file
        self.credential: str | None = None  # this node's, from the register reply
        self.bytes_sent = self.bytes_received = 0
        verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            verify=verify,
            timeout=timeout,
            event_hooks={"request": [self._count_request], "response": [self._count_response]},
            headers={"User-Agent": f"node-daemon/{node_daemon.__version__}"},
        )
        for name in ("Accept", "Accept-Encoding"):  # defaults the API does not need
            self._http.headers.pop(name, None)

    def _count_request(self, request: httpx.Request) -> None:
        head = f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\n"
        self.bytes_sent += len(head) + _headers(request.headers) + len(request.content)

    def _count_response(self, response: httpx.Response) -> None:
        response.read()
        self.bytes_received += 17 + _headers(response.headers) + len(response.content)

    def _call(self, method: str, path: str, secret: str, **kw) -> Any:
        headers = {"Authorization": f"Bearer {secret}", **kw.pop("headers", {})}
        try:
            reply = self._http.request(method, path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise ApiUnavailable(f"{method} {path.split('/')[-1]}: {type(exc).__name__}") from None
        if reply.status_code == 401:
            raise Unauthorized(f"{method}: 401 unauthorized")
        if reply.status_code >= 500 or reply.status_code == 429:
            raise ApiUnavailable(f"{method}: HTTP {reply.status_code}")
        if reply.status_code in (403, 409):
            raise Refused(f"HTTP {reply.status_code}: {_detail(reply)}")
        if reply.status_code >= 400:
            raise RuntimeError(f"{method}: HTTP {reply.status_code}: {_detail(reply)}")
        return reply.json()

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        """NODE_TOKEN (re-read: a rotated token needs no restart) and, when we have one,
        our credential: a bound instance is refused without it."""
        token = self.token_file.read_text().strip()
        headers = {"X-Node-Credential": self.credential} if self.credential else {}
        return self._call("POST", "/v1/nodes", token, json=body, headers=headers)

    def peers(self, node_id: str, since: int | None) -> dict[str, Any]:
        params = {} if since is None else {"since": since}
        return self._call("GET", f"/v1/nodes/{node_id}/peers", self._credential(), params=params)

    def heartbeat(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/v1/nodes/{node_id}/heartbeat", self._credential(), json=body)

    def _credential(self) -> str:
        if not self.credential:
            raise Unauthorized("no node credential: register first")
        return self.credential

    def close(self) -> None:
        self._http.close()


def _detail(reply: httpx.Response) -> str:
    """The control plane's one-line reason (bounded; never echoes a credential)."""
    try:
        detail = reply.json().get("detail", "")
    except (ValueError, AttributeError):
        detail = ""
    return str(detail)[:200] or reply.reason_phrase


def _headers(headers: httpx.Headers) -> int:
    return sum(len(k) + len(v) + 4 for k, v in headers.raw) + 2
