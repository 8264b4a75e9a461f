"""A hostile client against the real ``idra controlplane serve`` (issue 23): each attack
runs against the subprocess and shows it no longer works. Attackers connect from other
loopback addresses (127.0.0.2, …) than the probes (127.0.0.1), as they would from
elsewhere; the header timeout is 2 s here (10 s by default)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import string
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from idra.controlplane.edge import METHODS

from .conftest import ControlPlane, start, write_token

HEADER_TIMEOUT = 2.0
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: cp\r\n"


def _stop(server: ControlPlane) -> None:
    server.process.terminate()
    server.process.wait(10)


@pytest.fixture(scope="module")
def edge_cp(tmp_path_factory, backend):
    """One server for the attacks that leave nothing behind (all connections closed)."""
    server = start(
        tmp_path_factory.mktemp("edge"), "--header-timeout", str(HEADER_TIMEOUT),
        "--max-connections-per-client", "300", "--max-long-polls", "3",
    )  # fmt: skip
    yield server
    _stop(server)


def _port(cp: ControlPlane) -> int:
    return int(cp.url.rsplit(":", 1)[1])


def connect(cp: ControlPlane, source: str = "127.0.0.2", send: bytes = b"") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", _port(cp)))
    if send:
        sock.sendall(send)
    sock.setblocking(False)
    return sock


def closed(sock: socket.socket) -> bool:
    """The server closed it (end of stream or reset); False while it stays open."""
    try:
        while data := sock.recv(65536):
            del data
        return True
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except (ConnectionError, ssl.SSLError):
        return True


def watch(socks: list[socket.socket], limit: float, every=None) -> dict[socket.socket, float]:
    """Seconds until each socket was closed by the server (at most ``limit``); ``every``
    runs between two looks (a probe, a trickled byte)."""
    started, closed_after = time.monotonic(), {}
    while len(closed_after) < len(socks) and time.monotonic() - started < limit:
        for sock in socks:
            if sock not in closed_after and closed(sock):
                closed_after[sock] = time.monotonic() - started
        if every:
            every()
        time.sleep(0.05)
    return closed_after


def healthz_seconds(cp: ControlPlane) -> float:
    started = time.monotonic()
    assert httpx.get(cp.url + "/healthz", verify=cp.verify, timeout=5).status_code == 200
    return time.monotonic() - started


def metrics(cp: ControlPlane) -> dict[str, list]:
    with cp.client("metrics") as scraper:
        reply = scraper.get("/metrics")
    assert reply.status_code == 200, reply.text
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


# -- junk methods ---------------------------------------------------------------------


def test_junk_methods_leave_the_method_label_set_bounded(edge_cp: ControlPlane) -> None:
    """300 junk method names, then 300 more: the second 300 add no series at all."""
    rng = random.Random(23)  # noqa: S311  (names, not secrets)
    counts, methods = [], []
    requests = "idra_controlplane_requests_total"
    metrics(edge_cp)  # the scrape's own series exists before the first count
    with httpx.Client(base_url=edge_cp.url, timeout=10) as http:
        for _ in range(2):
            for n in range(300):
                method = "".join(rng.choices(string.ascii_uppercase, k=10)) + str(n)
                path = rng.choice(["/healthz", "/v1/nodes", "/metrics", "/no/such/path"])
                assert http.request(method, path).status_code == 501, method
            assert http.request("PATCH", "/healthz").status_code == 405, "known, not routed"
            samples = metrics(edge_cp)
            counts.append(len(samples[requests]))
            methods.append({s.labels["method"] for s in samples[requests]})
    assert "other" in methods[1] and methods[1] <= METHODS | {"other"}
    assert value(samples, requests, method="other", status="501") == 600
    assert counts[0] == counts[1], "no new series for new junk"


def test_an_incomplete_request_head_over_16_kib_is_400(edge_cp: ControlPlane) -> None:
    """h11 buffers at most 16 KiB of a head still coming (a head that arrives in one
    read is parsed at once)."""
    sock = connect(edge_cp, send=PARTIAL + b"X-Big: ")
    sock.setblocking(True)
    sock.settimeout(5)
    with contextlib.suppress(OSError):  # the server may close while we still send
        for _ in range(20):
            sock.sendall(b"x" * 1024)
            time.sleep(0.01)
    reply = sock.recv(4096)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400"), reply


# -- slowloris ------------------------------------------------------------------------


def test_half_open_connections_are_closed_within_the_header_timeout(edge_cp: ControlPlane):
    """100 idle and 100 partial-header connections (half of these trickling a header
    line every 0.3 s); meanwhile /healthz answers in under 1 s."""
    idle = [connect(edge_cp) for _ in range(100)]
    partial = [connect(edge_cp, send=PARTIAL) for _ in range(100)]
    probes, last_trickle = [], [time.monotonic()]

    def probe_and_trickle() -> None:
        probes.append(healthz_seconds(edge_cp))
        if time.monotonic() - last_trickle[0] > 0.3:
            last_trickle[0] = time.monotonic()
            for sock in partial[:50]:
                with contextlib.suppress(OSError):  # closed already
                    sock.send(b"X-Slow: 1\r\n")

    try:
        closed_after = watch(idle + partial, HEADER_TIMEOUT + 3, probe_and_trickle)
    finally:
        for sock in idle + partial:
            sock.close()
    assert len(closed_after) == 200, "every connection closed"
    assert max(closed_after.values()) < HEADER_TIMEOUT + 1.5
    assert min(closed_after.values()) > HEADER_TIMEOUT - 0.7, "by the timeout, not a cap"
    assert len(probes) > 10 and max(probes) < 1.0, probes
    assert value(metrics(edge_cp), "idra_controlplane_header_timeouts_total") >= 200


def test_a_kept_alive_connection_cannot_trickle_its_next_request(edge_cp: ControlPlane) -> None:
    """uvicorn's keep-alive timeout restarts on every byte; the header timeout does not."""
    sock = connect(edge_cp, send=PARTIAL + b"\r\n")
    assert not watch([sock], 0.5), "the first request is answered, the connection kept"
    byte = iter(PARTIAL * 20)

    def trickle() -> None:
        with contextlib.suppress(OSError):
            sock.send(bytes([next(byte)]))

    try:
        closed_after = watch([sock], HEADER_TIMEOUT + 4, trickle)
    finally:
        sock.close()
    assert closed_after and closed_after[sock] < HEADER_TIMEOUT + 1


def test_over_tls_idle_partial_and_stalled_handshakes_are_closed(tmp_path) -> None:
    server = start(tmp_path, "--header-timeout", str(HEADER_TIMEOUT), tls=True)
    try:
        tls = []
        for n in range(20):
            raw = socket.create_connection(("127.0.0.1", _port(server)))
            sock = server.verify.wrap_socket(raw, server_hostname="127.0.0.1")
            if n % 2:
                sock.sendall(PARTIAL)
            sock.setblocking(False)
            tls.append(sock)
        stalled = [connect(server, send=b"\x16\x03") for _ in range(10)]  # a handshake begun
        closed_after = watch(tls + stalled, HEADER_TIMEOUT + 3)
        for sock in tls + stalled:
            sock.close()
        assert len(closed_after) == 30
        assert max(closed_after.values()) < HEADER_TIMEOUT + 1.5
        assert healthz_seconds(server) < 1.0
    finally:
        _stop(server)


def test_connection_caps_per_client_and_in_total(tmp_path) -> None:
    server = start(
        tmp_path, "--header-timeout", str(HEADER_TIMEOUT), "--max-connections", "16",
        "--max-connections-per-client", "5",
    )  # fmt: skip
    try:
        first = [connect(server, "127.0.0.2") for _ in range(8)]
        time.sleep(0.3)
        assert sum(closed(s) for s in first) == 3, "5 per client address"
        others = [
            connect(server, source) for source in ("127.0.0.3", "127.0.0.4") for _ in range(5)
        ]
        last = [connect(server, "127.0.0.5") for _ in range(5)]
        time.sleep(0.3)
        assert sum(closed(s) for s in others) == 0
        assert sum(closed(s) for s in last) == 4, "16 in total"
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url + "/healthz", timeout=2)  # a 17th: closed at once
        assert len(watch(first + others + last, HEADER_TIMEOUT + 2)) == 23, "held ones too"
        for sock in first + others + last:
            sock.close()
        assert healthz_seconds(server) < 1.0, "slots given back"
        assert value(metrics(server), "idra_controlplane_connections_refused_total") >= 8
    finally:
        _stop(server)


def test_file_limit_raised_and_never_exhausted(tmp_path) -> None:
    """Soft 256, hard 300: raised to 300, so at most 172 connections (128 kept for the
    process); 400 connections never make accept() fail (no traceback, no log flood)."""
    server = start(
        tmp_path, "--header-timeout", str(HEADER_TIMEOUT), "--max-connections-per-client",
        "1000", open_files=(256, 300),
    )  # fmt: skip
    try:
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        assert [line.split()[3:5] for line in limits.splitlines() if "open files" in line] == [
            ["300", "300"]
        ]
        socks = []
        for n in range(400):
            try:
                socks.append(connect(server, f"127.0.0.{2 + n % 4}"))
            except OSError:
                break  # the listen backlog full: refused too
        time.sleep(0.5)
        held = sum(not closed(s) for s in socks)
        assert held <= 172, held
        watch(socks, HEADER_TIMEOUT + 2)
        for sock in socks:
            sock.close()
        assert healthz_seconds(server) < 1.0
        assert value(metrics(server), "idra_controlplane_connections_max") == 172
    finally:
        _stop(server)
    log = server.log.read_text()
    assert "lowered to 172" in log
    assert "Traceback" not in log and "out of system resource" not in log, log[-2000:]
    assert len(log) < 2000


# -- long-polls -----------------------------------------------------------------------


async def _polls(cp: ControlPlane, node: str, count: int, during=None) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {cp.credentials[node]}"}
    path = f"/v1/nodes/{node}/peers"
    async with httpx.AsyncClient(base_url=cp.url, headers=headers, timeout=10) as http:
        version = (await http.get(path)).json()["version"]
        params = {"since": version, "wait": 2}
        polls = [asyncio.create_task(http.get(path, params=params)) for _ in range(count)]
        if during:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(during)
        return await asyncio.gather(*polls)


def test_one_node_holds_at_most_two_long_polls(edge_cp: ControlPlane) -> None:
    node, other = edge_cp.register(), edge_cp.register()
    seen = {}

    def during() -> None:
        seen["held"] = value(metrics(edge_cp), "idra_controlplane_long_polls_held")
        started = time.monotonic()
        edge_cp.heartbeat(other)
        seen["heartbeat"] = time.monotonic() - started

    replies = asyncio.run(_polls(edge_cp, node, 20, during))
    codes = [r.status_code for r in replies]
    assert codes.count(200) == 2 and codes.count(429) == 18, codes
    refused = next(r for r in replies if r.status_code == 429)
    assert refused.headers["retry-after"] == "5" and "2 long-polls" in refused.json()["detail"]
    assert seen["held"] == 2 and seen["heartbeat"] < 1.0, seen


def test_long_polls_are_capped_in_total(edge_cp: ControlPlane) -> None:
    """--max-long-polls 3: two nodes hold 2 and 1; a third node's poll is 429."""
    a, b, c = (edge_cp.register() for _ in range(3))

    async def all_three() -> list[list[httpx.Response]]:
        first = asyncio.gather(_polls(edge_cp, a, 2), _polls(edge_cp, b, 1))
        await asyncio.sleep(0.7)
        late = await _polls(edge_cp, c, 1)
        return [*await first, late]

    held_a, held_b, late = asyncio.run(all_three())
    assert [r.status_code for r in held_a + held_b] == [200, 200, 200]
    assert late[0].status_code == 429 and "full" in late[0].json()["detail"]


# -- identity documents and token files -----------------------------------------------


def test_a_signed_deeply_nested_document_is_refused_not_a_crash(edge_cp: ControlPlane) -> None:
    nested = "[" * 2000 + "]" * 2000
    signed = {"document": nested, "signature": edge_cp.signer.sign(nested)}
    reply = edge_cp.register_reply(identity=signed)
    assert reply.status_code == 403 and "malformed" in reply.json()["detail"]
    unsigned = {"document": nested, "signature": signed["signature"][::-1]}
    reply = edge_cp.register_reply(identity=unsigned)
    assert reply.status_code == 403 and "signature" in reply.json()["detail"], "checked first"
    deep_body = b'{"identity": ' + b"[" * 30000 + b"]" * 30000 + b"}"
    headers = {"Authorization": f"Bearer {edge_cp.tokens['node']}",
               "Content-Type": "application/json"}  # fmt: skip
    reply = httpx.post(edge_cp.url + "/v1/nodes", content=deep_body, headers=headers, timeout=10)
    assert reply.status_code == 400, reply.text
    assert "Traceback" not in edge_cp.log.read_text()


@pytest.mark.parametrize(("kind", "mode"), [("node", 0o644), ("operator", 0o640),
                                            ("metrics", 0o604)])  # fmt: skip
def test_a_token_file_others_can_read_is_refused(tmp_path, kind: str, mode: int) -> None:
    args = []
    for name in ("node", "operator", "client", "metrics"):
        token = write_token(tmp_path / f"{name}.token", f"{name}-token-0123456789")
        args += [f"--{name}-token-file", str(token)]
    (tmp_path / f"{kind}.token").chmod(mode)
    result = subprocess.run(
        [sys.executable, "-m", "idra.cli", "controlplane", "serve", "--db",
         str(tmp_path / "cp.db"), "--listen", "127.0.0.1:1", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"--{kind}-token-file {tmp_path / kind}.token" in result.stderr
    assert f"{mode:04o}" in result.stderr
    assert not (tmp_path / "cp.db").exists()
