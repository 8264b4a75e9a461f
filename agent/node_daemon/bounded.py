"""HTTP calls that always end: an overall deadline (not only a per-read timeout) and a
cap on the reply's size, read as a stream. Every failure becomes one :class:`Fault`.

The deadline is enforced below httpx, on the socket: each connect, read and write gets
at most the time left, so a reply trickling one byte every 2 s is cut at the deadline.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def sanitize(text: object, limit: int = 160) -> str:
    """One printable line: control characters dropped, length capped."""
    return _CONTROL.sub("", str(text))[:limit]


class Fault(RuntimeError):
    """A dependency failed. ``kind`` is a metric label: transport, timeout, redirect,
    http_4xx, http_5xx, throttled, oversized, malformed, not_found, refused,
    too_many_peers (a full list longer than ``--max-peers``)."""

    def __init__(self, dependency: str, kind: str, detail: str = "") -> None:
        super().__init__(sanitize(f"{dependency} {kind}" + (f": {detail}" if detail else "")))
        self.dependency, self.kind = dependency, kind


class _Clock:
    deadline = math.inf

    def left(self, timeout: float | None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("overall deadline passed")
        return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, clock: _Clock) -> None:
        self._inner, self._clock = inner, clock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._clock.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._clock.left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> _Stream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._clock.left(timeout))
        return _Stream(inner, self._clock)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend, clock: _Clock) -> None:
        self._inner, self._clock = inner, clock

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = self._inner.connect_tcp(
            host, port, self._clock.left(timeout), local_address, socket_options
        )
        return _Stream(stream, self._clock)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        stream = self._inner.connect_unix_socket(path, self._clock.left(timeout), socket_options)
        return _Stream(stream, self._clock)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


@dataclass
class Reply:
    status: int
    body: bytes
    head_bytes: int  # status line and headers, as counted on the wire
    sent_bytes: int  # the request: line, headers, body

    def json_object(self, dependency: str, what: str) -> dict[str, Any]:
        """The body as a JSON object, or a ``malformed`` fault (HTML, a list, bad UTF-8)."""
        try:
            document = json.loads(self.body)
        except (ValueError, RecursionError):
            raise Fault(dependency, "malformed", f"{what}: not JSON") from None
        if not isinstance(document, dict):
            raise Fault(dependency, "malformed", f"{what}: not a JSON object")
        return document


class BoundedClient:
    """An httpx client whose every call ends within ``deadline`` seconds and reads at
    most ``max_bytes`` of reply. Redirects are not followed (a 3xx is a fault)."""

    def __init__(self, dependency: str, base_url: str, *, verify: Any = True,
                 timeout: float = 5.0, deadline: float = 15.0, max_bytes: int = 1 << 16,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        self.dependency, self.deadline, self.max_bytes = dependency, deadline, max_bytes
        self._clock = _Clock()
        transport = httpx.HTTPTransport(verify=verify)
        pool = transport._pool  # httpx 0.28 (pinned): its httpcore pool takes a backend
        pool._network_backend = _Backend(pool._network_backend, self._clock)
        self._http = httpx.Client(
            base_url=base_url, transport=transport, timeout=timeout, follow_redirects=False
        )
        for name in ("Accept", "Accept-Encoding"):  # no compressed replies: sizes are real
            self._http.headers.pop(name, None)
        self._http.headers.update(headers or {})

    def request(self, method: str, path: str, *, max_bytes: int | None = None, **kw) -> Reply:
        cap = self.max_bytes if max_bytes is None else max_bytes
        what = f"{method} {path.rsplit('/', 1)[-1] or path}"
        self._clock.deadline = time.monotonic() + self.deadline
        try:
            request = self._http.build_request(method, path, **kw)
            sent = len(f"{method} {request.url.raw_path.decode()} HTTP/1.1\r\n")
            sent += _head(request.headers) + len(request.content)
            reply = self._http.send(request, stream=True)
            try:
                length = reply.headers.get("content-length", "")
                if length.isdigit() and int(length) > cap:
                    raise Fault(self.dependency, "oversized", f"{what}: {length} bytes")
                body = bytearray()
                for chunk in reply.iter_raw():
                    body += chunk
                    if len(body) > cap:
                        raise Fault(self.dependency, "oversized", f"{what}: over {cap} bytes")
                return Reply(reply.status_code, bytes(body), 17 + _head(reply.headers), sent)
            finally:
                reply.close()
        except httpx.TimeoutException:
            raise Fault(self.dependency, "timeout", what) from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError) as exc:
            raise Fault(self.dependency, "transport", f"{what}: {type(exc).__name__}") from None
        finally:
            self._clock.deadline = math.inf

    def close(self) -> None:
        self._http.close()


def _head(headers: httpx.Headers) -> int:
    return sum(len(k) + len(v) + 4 for k, v in headers.raw) + 2
