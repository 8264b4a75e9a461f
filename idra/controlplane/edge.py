"""Connection discipline at the edge of the process (issue 23): what an unauthenticated
socket may cost the control plane.

- :class:`ListeningSocket` counts every accepted connection (TLS handshakes included)
  and closes one at once beyond ``max_connections`` in total or ``per_client`` from one
  client address (an IPv6 client by its /64), so the process never runs out of file
  descriptors and one address cannot take every slot;
- :class:`HeaderTimeoutH11` (uvicorn's h11 protocol) closes a connection whose request
  head and body have not arrived ``header_timeout`` seconds after it opened, or after
  the first byte of the next request on a kept-alive connection (uvicorn has only an
  idle keep-alive timeout, which any trickled byte resets);
- :class:`MethodGate` answers an unknown HTTP method 501 before routing, and
  :func:`method_label` keeps junk method names out of the metrics.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import resource
import socket
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("idra.controlplane")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
FD_RESERVE = 128  # descriptors kept for the database, logs and the listening socket
REFUSE_PER_WAKEUP = 64  # refused connections closed per accept call, then back to the loop


def method_label(method: str) -> str:
    """A metrics label: a known method, else ``other`` (the label set stays bounded)."""
    return method if method in METHODS else "other"


class MethodGate:
    """ASGI middleware: 501 for a method no route could ever accept, before routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in METHODS:
            body = json.dumps({"detail": "method not implemented"}).encode()
            await send({
                "type": "http.response.start", "status": 501,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")],
            })  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def client_key(host: str) -> str:
    """What the per-client cap counts by: the IPv4 address, or the IPv6 /64."""
    address = ipaddress.ip_address(host.split("%")[0])
    if address.version == 6:
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(eq=False)  # a collector in a registry: hashable by identity
class Caps:
    """Open connections, in total and per client; what was refused or timed out."""

    total: int
    per_client: int
    open: int = 0
    by_client: Counter[str] = field(default_factory=Counter)
    refused: int = 0
    timed_out: int = 0

    def admit(self, key: str) -> bool:
        if self.open >= self.total or self.by_client[key] >= self.per_client:
            self.refused += 1
            return False
        self.open += 1
        self.by_client[key] += 1
        return True

    def release(self, key: str) -> None:
        self.open -= 1
        self.by_client[key] -= 1
        if not self.by_client[key]:
            del self.by_client[key]

    def collect(self):
        """Prometheus collector: aggregates only (no address)."""
        yield GaugeMetricFamily(
            "idra_controlplane_connections_open", "Client connections open now.", value=self.open
        )
        yield GaugeMetricFamily(
            "idra_controlplane_connections_max", "Cap on open connections.", value=self.total
        )
        for name, value, text in (
            ("connections_refused", self.refused, "Connections closed at once: over a cap."),
            ("header_timeouts", self.timed_out, "Connections closed: request not in in time."),
        ):
            yield CounterMetricFamily(f"idra_controlplane_{name}", text, value=value)


class _Connection(socket.socket):
    """An accepted connection that gives its slot back when closed."""

    caps: Caps | None = None
    key = ""

    def close(self) -> None:
        caps, self.caps = self.caps, None
        if caps is not None:
            caps.release(self.key)
        super().close()

    def __del__(self) -> None:  # never closed (should not happen): still give the slot back
        if self.caps is not None:
            self.caps.release(self.key)
            self.caps = None


class ListeningSocket(socket.socket):
    """The listening socket; ``accept`` (called by asyncio on the event loop) admits a
    connection within the caps, or closes it at once."""

    caps: Caps

    def accept(self) -> tuple[socket.socket, object]:
        for _ in range(REFUSE_PER_WAKEUP):
            fd, address = self._accept()  # BlockingIOError when none is waiting
            key = client_key(address[0])
            if self.caps.admit(key):
                conn = _Connection(self.family, self.type, self.proto, fileno=fd)
                conn.caps, conn.key = self.caps, key
                return conn, address
            socket.close(fd)
        raise BlockingIOError  # the rest on the loop's next turn


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request to arrive."""

    header_timeout = 10.0
    caps: Caps | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._deadline = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expired, self.cycle)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)

    def _expired(self, cycle_before) -> None:
        self._deadline = None
        waiting = self.cycle is cycle_before or self.cycle.more_body  # head or body not in
        if waiting and not self.transport.is_closing():
            if self.caps is not None:
                self.caps.timed_out += 1
            self.transport.close()

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol(header_timeout: float, caps: Caps) -> type[HeaderTimeoutH11]:
    """The protocol class uvicorn builds each connection with (``http=``)."""
    return type(
        "HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout": header_timeout, "caps": caps}
    )


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft


def connection_cap(wanted: int, file_limit: int) -> int:
    """``wanted``, or less if the open-file limit could not hold it (logged)."""
    fits = max(file_limit - FD_RESERVE, 16)
    if wanted > fits:
        log.warning(
            "--max-connections %d lowered to %d: the open-file limit is %d", wanted, fits,
            file_limit,
        )  # fmt: skip
        return fits
    return wanted
