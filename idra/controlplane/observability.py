"""``GET /healthz`` (no token) and ``GET /metrics`` (the metrics-only or the operator
token; Prometheus text, or OpenMetrics when the scraper asks for it).

Metrics are aggregates only: request counts by route template and known method (never a
raw path or a junk method name, so the label set stays bounded and no node id or key
becomes a label), latency, nodes by state, peers, change-log rows. A
long-poll (a request with ``wait``) is held on purpose, up to a minute: its time goes to
its own histogram, never into the request latency.
"""

from __future__ import annotations

import logging
import platform
import time
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from idra import __version__
from idra.controlplane.auth import requires
from idra.controlplane.edge import method_label
from idra.controlplane.store import Store

log = logging.getLogger("idra.controlplane")
STATES = ("active", "draining")


class _StoreCollector:
    """Reads the database at scrape time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self):
        counts = self.store.counts()
        nodes = GaugeMetricFamily("idra_controlplane_nodes", "Nodes by state.", labels=["state"])
        for state in sorted(set(STATES) | set(counts["nodes"])):
            nodes.add_metric([state], counts["nodes"].get(state, 0))
        yield nodes
        for name, key, text in (
            ("peers", "peers", "Client peers assigned to nodes."),
            ("active_peers", "active_peers", "Active peers the nodes last reported, summed."),
            ("changelog_rows", "changes", "Rows in the peer change log."),
            ("peers_version", "version", "Current peers version."),
        ):
            yield GaugeMetricFamily(f"idra_controlplane_{name}", text, value=counts[key])
        yield GaugeMetricFamily(
            "idra_controlplane_long_polls_held",
            "Peer long-polls (GET …/peers?wait=) held open now.",
            value=self.store.notifier.held,
        )


class _RequestMetrics:
    """ASGI middleware: count and time every HTTP request by route template and status."""

    def __init__(self, app: Any, requests: Counter, latency: Histogram, held: Histogram) -> None:
        self.app, self.requests, self.latency, self.held = app, requests, latency, held

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(route, method_label(scope["method"]), str(status)).inc()
            took = time.perf_counter() - start
            if _long_poll(scope):
                self.held.observe(took)
            else:
                self.latency.labels(route).observe(took)


def _long_poll(scope: dict) -> bool:
    """A request the API may hold: ``since`` and a positive ``wait`` in its query."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    try:
        return "since" in query and float(query.get("wait", ["0"])[-1]) > 0
    except ValueError:
        return False  # refused with 400 at once


def _encoder(accept: str | None):
    """prometheus_client's content negotiation (OpenMetrics when asked); a malformed
    Accept header gets the classic text format."""
    try:
        return choose_encoder(accept or "")
    except (ValueError, TypeError):  # e.g. "version=x": prometheus_client compares str to int
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4


def install(app: FastAPI, store: Store) -> CollectorRegistry:
    """Add the two routes and the request middleware to ``app``; return its registry
    (also ``app.state.registry``, for collectors of the server around the app)."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    build = Gauge(
        "idra_controlplane_build_info", "The running build (always 1).",
        ["version", "python"], registry=registry,
    )  # fmt: skip
    build.labels(__version__, platform.python_version()).set(1)
    app.state.registry = registry
    requests = Counter(
        "idra_controlplane_requests", "HTTP requests by route, method and status.",
        ["route", "method", "status"], registry=registry,
    )  # fmt: skip
    latency = Histogram(
        "idra_controlplane_request_duration_seconds", "Time to answer, by route.", ["route"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    )  # fmt: skip
    held = Histogram(
        "idra_controlplane_long_poll_duration_seconds",
        "Time a long-poll (GET …/peers?wait=) was held until answered.", registry=registry,
        buckets=(0.01, 0.1, 0.5, 1, 5, 10, 30, 45, 60, 75),
    )  # fmt: skip
    registry.register(_StoreCollector(store))
    if hasattr(store.notifier, "collect"):  # PostgreSQL: the listener's watchdog
        registry.register(store.notifier)
    app.add_middleware(_RequestMetrics, requests=requests, latency=latency, held=held)

    @app.get("/healthz", include_in_schema=False, **requires("public"))
    def healthz() -> Response:
        try:
            store.ping()
        except SQLAlchemyError as exc:
            log.error("health check: database does not answer: %s", type(exc).__name__)
            return JSONResponse({"status": "unavailable", "database": "error"}, status_code=503)
        listener = getattr(store.notifier, "health", None)  # PostgreSQL: the watchdog
        if listener is not None and listener()["listener"] != "ok":
            # Long-polls here would wait for the fallback poll: the balancer sends the
            # agents to a replica that hears every change at once.
            log.error("health check: the change listener is down")
            return JSONResponse(
                {"status": "unavailable", "database": "ok", "listener": "down"}, status_code=503
            )
        return JSONResponse(
            {"status": "ok", "database": "ok"} | ({"listener": "ok"} if listener else {})
        )

    @app.get("/metrics", include_in_schema=False, **requires("metrics"))
    def metrics(request: Request) -> Response:
        encode, content_type = _encoder(request.headers.get("accept"))
        return Response(encode(registry), media_type=content_type)

    return registry
