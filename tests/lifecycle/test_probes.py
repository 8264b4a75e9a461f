"""HTTP probes from a chosen source address against a server that blocks some sources
(as a streaming service blocks known VPN addresses)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from idra.lab.services import WhoAmI, streaming_handler
from idra.lifecycle.dnsbl import Verdict
from idra.lifecycle.probes import Target, egress, load_probes, probe, through_node

LISTED = "127.0.0.3"


@pytest.fixture(scope="module")
def streaming() -> str:
    handler = streaming_handler(lambda: {LISTED: "listed"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/geo"
    server.shutdown()


def _target(url: str, **blocked) -> Target:
    return Target.model_validate({"name": "streaming", "url": url, "blocked": blocked})


@pytest.mark.parametrize("rule", [{"status": [403]}, {"body": "(?i)proxy"}], ids=["status", "body"])
@pytest.mark.parametrize(
    ("source", "verdict"), [("127.0.0.2", Verdict.CLEAN), (LISTED, Verdict.LISTED)]
)
def test_blocked_rule_applies_to_the_source_address(streaming, rule, source, verdict) -> None:
    assert probe(_target(streaming, **rule), source).verdict is verdict


def test_unreachable_target_is_an_error_not_a_listing() -> None:
    check = probe(_target("http://127.0.0.1:9/", status=[403]), "127.0.0.2", timeout=1)
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


@pytest.fixture(scope="module")
def whoami() -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WhoAmI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_egress_must_be_the_nodes_address(whoami) -> None:
    assert egress(whoami, "127.0.0.1").verdict is Verdict.CLEAN
    wrong = egress(whoami, "203.0.113.11")
    assert wrong.verdict is Verdict.ERROR and "127.0.0.1" not in wrong.detail
    assert egress("http://127.0.0.1:9/", "127.0.0.1", timeout=1).verdict is Verdict.ERROR


def test_probes_that_did_not_leave_as_the_node_never_list(streaming, whoami) -> None:
    """The streaming service refuses 127.0.0.1, but the traffic was not the node's: the
    probe is an error, never a listing (it would drain the wrong node)."""
    refusing = streaming_handler(lambda: {"127.0.0.1": "refused"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = _target(f"http://127.0.0.1:{server.server_address[1]}/", status=[403])
    try:
        elsewhere = through_node([target], whoami, "203.0.113.11")
        as_node = through_node([target], whoami, "127.0.0.1")
    finally:
        server.shutdown()
    assert [c.verdict for c in elsewhere] == [Verdict.ERROR, Verdict.ERROR]
    assert [c.verdict for c in as_node] == [Verdict.CLEAN, Verdict.LISTED]
