"""Node API v1 client (httpx). HTTPS only; plain http only to loopback or when allowed."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any

import httpx

import node_daemon


class Unauthorized(RuntimeError):
    """The control plane refused our token (401)."""


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

    def _call(self, method: str, path: str, **kw) -> Any:
        token = self.token_file.read_text().strip()  # re-read: a rotated token needs no restart
        try:
            reply = self._http.request(
                method, path, headers={"Authorization": f"Bearer {token}"}, **kw
            )
        except httpx.HTTPError as exc:
            raise ApiUnavailable(f"{method} {path.split('/')[-1]}: {type(exc).__name__}") from None
        if reply.status_code == 401:
            raise Unauthorized(f"{method}: 401 unauthorized")
        if reply.status_code >= 500 or reply.status_code == 429:
            raise ApiUnavailable(f"{method}: HTTP {reply.status_code}")
        if reply.status_code >= 400:
            raise RuntimeError(f"{method}: HTTP {reply.status_code}: {reply.text[:200]}")
        return reply.json()

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/nodes", json=body)

    def peers(self, node_id: str, since: int | None) -> dict[str, Any]:
        params = {} if since is None else {"since": since}
        return self._call("GET", f"/v1/nodes/{node_id}/peers", params=params)

    def heartbeat(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/v1/nodes/{node_id}/heartbeat", json=body)

    def close(self) -> None:
        self._http.close()


def _headers(headers: httpx.Headers) -> int:
    return sum(len(k) + len(v) + 4 for k, v in headers.raw) + 2
