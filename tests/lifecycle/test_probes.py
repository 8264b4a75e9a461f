"""HTTP probes from a chosen source address against a server that blocks some sources
(as a streaming service blocks known VPN addresses)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from idra.lifecycle.dnsbl import Verdict
from idra.lifecycle.probes import Target, load_probes, probe

FORBIDDEN, PROXY_PAGE = "127.0.0.3", "127.0.0.4"


@pytest.fixture(scope="module")
def streaming() -> str:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            source = self.client_address[0]
            status = 403 if source == FORBIDDEN else 200
            body = b"Proxy detected" if source == PROXY_PAGE else b"Welcome"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/geo"
    server.shutdown()


def _target(url: str) -> Target:
    return Target.model_validate(
        {"name": "streaming", "url": url, "blocked": {"status": [403], "body": "(?i)proxy"}}
    )


@pytest.mark.parametrize(
    ("source", "verdict"),
    [("127.0.0.2", Verdict.CLEAN), (FORBIDDEN, Verdict.LISTED), (PROXY_PAGE, Verdict.LISTED)],
)
def test_blocked_rule_applies_to_the_source_address(streaming, source, verdict) -> None:
    assert probe(_target(streaming), source).verdict is verdict


def test_unreachable_target_is_an_error_not_a_listing() -> None:
    check = probe(_target("http://127.0.0.1:9/"), "127.0.0.2", timeout=1)
    assert check.verdict is Verdict.ERROR


def test_probes_file(tmp_path: Path) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(
        "targets:\n  - {name: s, url: 'https://s.example/', blocked: {status: [451]}}\n"
    )
    assert load_probes(path)[0].blocked.status == [451]
    path.write_text("targets:\n  - {name: s, url: 'https://s.example/', blocked: {body: '('}}\n")
    with pytest.raises(ValueError, match=r"probes\.yaml: targets\.0\.blocked\.body"):
        load_probes(path)
