"""``/healthz`` and ``/metrics`` of the control plane; metrics parsed with prometheus_client's
own text parser; aggregates only (no node id, key or address in a label)."""

from __future__ import annotations

import ipaddress
import statistics
import time
import warnings

from prometheus_client.parser import text_string_to_metric_families

from idra.controlplane.app import Settings, create_app
from idra.controlplane.store import Pool, Store

from .conftest import ControlPlane, database_url, wg_key


def _samples(text: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def _value(samples: dict[str, list], name: str, **labels: str) -> float:
    matching = [
        s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert matching, f"{name}{labels} not found"
    return sum(matching)


def test_healthz_needs_no_token(cp: ControlPlane) -> None:
    with cp.client(None) as anyone:
        reply = anyone.get("/healthz")
    assert reply.status_code == 200 and reply.json()["status"] == "ok"


def test_metrics_need_the_operator_token(cp: ControlPlane) -> None:
    for kind in (None, "node", "client"):
        with cp.client(kind) as client:
            assert client.get("/metrics").status_code == 401, kind


def test_metrics_in_prometheus_text(cp: ControlPlane) -> None:
    nodes = [cp.register(f"i-metrics{n}") for n in range(3)]
    cp.heartbeat(nodes[0], active_peers=2)
    cp.heartbeat(nodes[1], active_peers=1)
    keys = [wg_key() for _ in range(4)]
    with cp.client("client") as client:
        for key in keys:
            assert client.post("/v1/peers", json={"public_key": key}).status_code == 200
    with cp.client("operator") as ops:
        ops.post("/node/drain", json={"id": nodes[2], "reason": "manual"})
        assert ops.get("/no/such/path").status_code == 404
        reply = ops.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    samples = _samples(reply.text)

    requests = "idra_controlplane_requests_total"
    assert _value(samples, requests, route="/v1/nodes", method="POST", status="201") == 3
    heartbeat = "/v1/nodes/{node_id}/heartbeat"
    assert _value(samples, requests, route=heartbeat, method="POST", status="200") == 2
    assert _value(samples, requests, route="/node/drain", status="202") == 1
    assert _value(samples, requests, route="/v1/peers", status="200") == 4
    assert _value(samples, requests, route="unmatched") >= 1, "unknown paths share one label"
    latency = "idra_controlplane_request_duration_seconds"
    assert _value(samples, latency + "_count", route="/v1/peers") == 4
    assert _value(samples, latency + "_bucket", route="/v1/peers", le="+Inf") == 4

    assert _value(samples, "idra_controlplane_nodes", state="active") == 2
    assert _value(samples, "idra_controlplane_nodes", state="draining") == 1
    assert _value(samples, "idra_controlplane_peers") == 4
    assert _value(samples, "idra_controlplane_active_peers") == 3
    assert _value(samples, "idra_controlplane_changelog_rows") >= 4
    assert _value(samples, "idra_controlplane_peers_version") >= 4

    labels = " ".join(
        str(v) for group in samples.values() for s in group for v in s.labels.values()
    )
    for secret in (*nodes, *keys, "203.0.113.10", "10.96.0."):
        assert secret not in labels and secret not in reply.text


def test_held_long_polls_have_their_own_histogram(cp: ControlPlane) -> None:
    """A long-poll is held on purpose: its time never enters the request latency, so
    that latency still says how fast the control plane answers."""
    node_id = cp.register()
    with cp.client(node_id) as node:
        path = f"/v1/nodes/{node_id}/peers"
        version = node.get(path).json()["version"]
        assert node.get(path, params={"since": version, "wait": 1.2}).status_code == 200
        assert node.get(path, params={"since": version}).status_code == 200
    with cp.client("operator") as ops:
        samples = _samples(ops.get("/metrics").text)
    route = "/v1/nodes/{node_id}/peers"
    latency = "idra_controlplane_request_duration_seconds"
    assert _value(samples, latency + "_count", route=route) == 2  # the two not held
    assert _value(samples, latency + "_bucket", route=route, le="1.0") == 2
    held = "idra_controlplane_long_poll_duration_seconds"
    assert _value(samples, held + "_count") == 1
    assert _value(samples, held + "_bucket", le="1.0") == 0  # held its 1.2 s
    assert _value(samples, held + "_sum") >= 1.2
    requests = "idra_controlplane_requests_total"
    assert _value(samples, requests, route=route, status="200") == 3  # all counted


def test_replies_on_a_kept_alive_connection_are_not_delayed(cp: ControlPlane) -> None:
    """TCP_NODELAY on accepted connections: without it uvicorn's reply (head and body
    written apart) waited for the client's delayed ACK, 40 ms a request."""
    with cp.client(None) as http:
        took = []
        for _ in range(15):
            started = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            took.append(time.perf_counter() - started)
    assert statistics.median(took[1:]) < 0.02, took


def test_healthz_is_503_when_the_database_does_not_answer(tmp_path) -> None:
    with warnings.catch_warnings(action="ignore"):
        from fastapi.testclient import TestClient  # warns about its httpx use on import

    pool = Pool(ipaddress.IPv4Network("10.96.0.0/12"), ipaddress.IPv6Network("fd00::/64"))
    store = Store(database_url(tmp_path), pool)
    tokens = {kind: f"{kind}-token-0123456789" for kind in ("node", "operator", "client")}
    with TestClient(create_app(store, Settings(tokens))) as client:
        assert client.get("/healthz").status_code == 200
        store.close()
        reply = client.get("/healthz")
    assert reply.status_code == 503 and reply.json()["status"] == "unavailable"


def test_metrics_token_build_info_process_metrics_and_openmetrics(cp: ControlPlane) -> None:
    """The metrics-only token scrapes; OpenMetrics when asked for (its own parser),
    Prometheus text otherwise or when the Accept header is malformed."""
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )

    from idra import __version__

    openmetrics = "application/openmetrics-text; version=1.0.0"
    with cp.client("metrics") as scraper:
        plain = scraper.get("/metrics")
        negotiated = scraper.get("/metrics", headers={"Accept": openmetrics})
        malformed = scraper.get("/metrics", headers={"Accept": "text/plain; version=x"})
        assert scraper.get("/v1/nodes").status_code == 401, "and nothing else"
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert negotiated.headers["content-type"].startswith("application/openmetrics-text")
    assert negotiated.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(negotiated.text)}
    assert "idra_controlplane_requests" in families
    assert malformed.status_code == 200
    assert malformed.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(plain.text)
    assert _value(samples, "idra_controlplane_build_info", version=__version__) == 1
    assert _value(samples, "process_resident_memory_bytes") > 0
    assert _value(samples, "process_open_fds") > 0
    assert "python_info" in samples
