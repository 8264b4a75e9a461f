"""Operator mistakes end in one line on stderr, exit 2 (bad input) or 1 (a failed check),
and never a traceback. Every command runs through its installed entry point."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.controlplane.conftest import ControlPlane, free_port, start

BIN = Path(sys.executable).parent
IDRA, NODE_DAEMON = str(BIN / "idra"), str(BIN / "node-daemon")
# No AWS credentials anywhere, and never a request to the instance metadata address.
NO_AWS = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_CONFIG_FILE": "/nonexistent",
}


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60, **kw):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IDRA_"))}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=base | (env or {}), **kw
    )


def one_line(result, code: int, *expected: str) -> str:
    """The command exited ``code`` with exactly one stderr line holding ``expected``."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("cp"))
    yield server
    server.process.terminate()
    server.process.wait(10)


def ops(cp: ControlPlane) -> list[str]:
    return ["--api-url", cp.url, "--operator-token-file", str(cp.log.parent / "operator.token")]


def test_reap_aws_without_credentials_reports_each_node_and_goes_on(cp: ControlPlane) -> None:
    ids = [cp.register(f"i-nocreds{n}", region="eu-central-1") for n in range(2)]
    with cp.client("operator") as client:
        for node_id in ids:
            client.post("/node/drain", json={"id": node_id, "reason": "compromised"})
    result = run(
        IDRA, "reap", *ops(cp), "--fleet", "aws", "--stack", "staging", "--json", env=NO_AWS
    )
    one_line(result, 1, "2 of 2 draining nodes failed")
    rows = {row["node_id"]: row for row in json.loads(result.stdout)}
    assert set(ids) <= set(rows), "the pass went on past the first failure"
    for node_id in ids:
        assert rows[node_id]["outcome"].startswith("error: NoCredentialsError")
    with cp.client("operator") as client:
        listed = {n["id"] for n in client.get("/v1/nodes").json()["nodes"]}
    assert set(ids) <= listed, "a node whose termination failed keeps its record"
    table = run(IDRA, "reap", *ops(cp), "--fleet", "aws", "--stack", "staging", env=NO_AWS)
    assert table.returncode == 1 and all(node_id in table.stdout for node_id in ids)


@pytest.mark.parametrize("command", ["reap", "canary", "nodes list"])
def test_api_url_with_v1_is_one_line(cp: ControlPlane, command: str) -> None:
    args = ["--api-url", cp.url + "/v1", *ops(cp)[2:]]
    args += ["--stack", "staging"] if command == "reap" else []  # the aws fleet's stack
    one_line(run(IDRA, *command.split(), *args), 1, "/v1/v1/nodes", "without /v1")


def test_wrong_operator_token(cp: ControlPlane, tmp_path: Path) -> None:
    (tmp_path / "wrong").write_text("not-the-token")
    result = run(IDRA, "nodes", "list", "--api-url", cp.url, "--operator-token-file",
                 str(tmp_path / "wrong"))  # fmt: skip
    one_line(result, 1, "401", "operator token")


@pytest.mark.parametrize("command", ["reap", "canary", "nodes list", "nodes show node-1"])
def test_ca_file_that_is_not_a_certificate(cp: ControlPlane, tmp_path: Path, command) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    result = run(IDRA, *command.split(), *ops(cp), "--ca-file", str(tmp_path / "ca.pem"))
    one_line(result, 2, "--ca-file", "ca.pem", "not a PEM")


def test_missing_token_file(cp: ControlPlane, tmp_path: Path) -> None:
    result = run(IDRA, "nodes", "list", "--api-url", cp.url, "--operator-token-file",
                 str(tmp_path / "none"))  # fmt: skip
    one_line(result, 2, "--operator-token-file", "No such file")


def test_control_plane_unreachable(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("token")
    url = f"http://127.0.0.1:{free_port()}"
    result = run(
        IDRA, "nodes", "list", "--api-url", url, "--operator-token-file", str(tmp_path / "t")
    )
    one_line(result, 1, "ConnectError", url)


def _serve(tmp_path: Path, *args: str, timeout: float = 20):
    tokens = []
    for kind in ("node", "operator", "client"):
        (tmp_path / f"{kind}.token").write_text(f"{kind}-token-0123456789abcdef")
        tokens += [f"--{kind}-token-file", str(tmp_path / f"{kind}.token")]
    return [IDRA, "controlplane", "serve", *tokens, "--insecure-skip-aws-verify", *args]


def test_serve_db_in_a_missing_folder(tmp_path: Path) -> None:
    result = run(*_serve(tmp_path, "--db", str(tmp_path / "no" / "cp.db")))
    one_line(result, 2, "--db", "does not exist")


@pytest.mark.parametrize("cert", ["garbage", "empty"])
def test_serve_bad_tls_cert(tmp_path: Path, cert: str) -> None:
    (tmp_path / "cert.pem").write_text("" if cert == "empty" else "-----BEGIN nonsense\n")
    (tmp_path / "key.pem").write_text("nonsense\n")
    tls = ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
    result = run(*_serve(tmp_path, "--db", str(tmp_path / "cp.db"), *tls))
    one_line(result, 2, "--tls-cert", "cert.pem")
    assert not (tmp_path / "cp.db").exists(), "nothing created on bad input"


@pytest.mark.parametrize("listen", ["nohost:8443", "127.0.0.1:99999", "127.0.0.1"])
def test_serve_bad_listen(tmp_path: Path, listen: str) -> None:
    one_line(run(*_serve(tmp_path, "--db", str(tmp_path / "cp.db"), "--listen", listen)), 2,
             "--listen")  # fmt: skip


def test_serve_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(*_serve(tmp_path, "--db", str(tmp_path / "cp.db"), "--listen",
                             f"127.0.0.1:{port}"))  # fmt: skip
    one_line(result, 1, "--listen", "in use")


def test_serve_listens_on_localhost(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        _serve(tmp_path, "--db", str(tmp_path / "cp.db"), "--listen", f"localhost:{port}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert "control plane on http://localhost:" in server.stdout.readline()
        reply = httpx.get(f"http://localhost:{port}/healthz", timeout=10)
        assert reply.status_code == 200
    finally:
        server.terminate()
        server.wait(10)
    assert "Traceback" not in server.stderr.read()


@pytest.mark.parametrize(
    ("nameserver", "text"),
    [("no..such-host", "cannot resolve"), ("127.0.0.1:99999", "port"), ("[::1]:x", "port")],
)
def test_canary_bad_nameserver(cp: ControlPlane, nameserver: str, text: str) -> None:
    one_line(run(IDRA, "canary", *ops(cp), "--nameserver", nameserver), 2, "--nameserver", text)


def test_canary_takes_a_nameserver_host_name(cp: ControlPlane, tmp_path: Path) -> None:
    from tests.lifecycle.dns_server import start as start_dns

    cp.register("i-hostname", public_ip="203.0.113.77")
    dns, _, _, address = start_dns("zen.test.example")
    port = address.rpartition(":")[2]
    try:
        result = run(IDRA, "canary", *ops(cp), "--dnsbl", "zen.test.example", "--nameserver",
                     f"localhost:{port}", "--json")  # fmt: skip
    finally:
        dns.stop()
    assert result.returncode == 0, result.stderr
    rows = {r["public_ip"]: r for r in json.loads(result.stdout)}
    assert rows["203.0.113.77"]["verdict"] == "clean"


def _sync(tmp_path: Path, interface: str):
    (tmp_path / "peers.json").write_text('{"peers": []}')
    peers = str(tmp_path / "peers.json")
    return run(NODE_DAEMON, "sync", "--driver", "kernel", "--interface", interface, "--peers",
               peers, "--client-pool", "10.96.0.0/12")  # fmt: skip


def test_node_daemon_sync_kernel_on_a_missing_interface(tmp_path: Path) -> None:
    result = _sync(tmp_path, "nosuch0")
    one_line(result, 2, "--interface nosuch0", "no such interface")


def test_node_daemon_sync_kernel_on_a_non_wireguard_interface(tmp_path: Path) -> None:
    result = _sync(tmp_path, "lo")
    one_line(result, 1, "--interface lo", "wg show lo")


def test_node_daemon_run_without_its_interface(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("node-token")
    result = run(
        NODE_DAEMON, "run", "--api-url", f"http://127.0.0.1:{free_port()}", "--token-file",
        str(tmp_path / "token"), "--interface", "nosuch0", "--imds-url", f"http://127.0.0.1:{free_port()}",
        "--region", "eu-west-1", "--public-ip", "203.0.113.1", "--state-dir", str(tmp_path / "s"),
        "--metrics-addr", "127.0.0.1:0", timeout=20,
    )  # fmt: skip
    one_line(result, 2, "--interface nosuch0", "no such interface")


def test_render_without_a_stack_file_here(tmp_path: Path) -> None:
    result = run(IDRA, "render", "--stack", "staging", "--out", str(tmp_path / "out"), cwd=tmp_path)
    one_line(result, 2, f"{tmp_path}/Pulumi.staging.yaml", "no such stack file")


def test_reap_bad_duration_and_nodes_bad_id(cp: ControlPlane) -> None:
    one_line(run(IDRA, "reap", *ops(cp), "--max-drain", "soon"), 2, "--max-drain")
    one_line(run(IDRA, "nodes", "show", "../etc", *ops(cp)), 2, "not a node id")
    one_line(run(IDRA, "nodes", "drain", "node-nope", *ops(cp)), 1, "node-nope: no such node")
    bad_reason = run(IDRA, "nodes", "drain", "node-nope", "--reason", "bored", *ops(cp))
    assert bad_reason.returncode == 2 and "Traceback" not in bad_reason.stderr


def test_log_format_json(cp: ControlPlane) -> None:
    """``--log-format json``: a failed canary pass under --every is one JSON log line."""
    result = run(IDRA, "--log-format", "json", "canary", "--api-url", cp.url + "/v1",
                 *ops(cp)[2:], "--every", "1", "--runs", "2")  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2, "two failed passes, two lines, and the loop went on"
    for line in lines:
        entry = json.loads(line)
        assert entry["level"] == "error" and "canary pass failed" in entry["message"]


def test_node_daemon_run_on_an_interface_that_is_not_wireguard(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("node-token")
    result = run(
        NODE_DAEMON, "run", "--api-url", f"http://127.0.0.1:{free_port()}", "--token-file",
        str(tmp_path / "token"), "--interface", "lo", "--driver", "kernel", "--imds-url",
        f"http://127.0.0.1:{free_port()}", "--region", "eu-west-1", "--public-ip", "203.0.113.1",
        "--state-dir", str(tmp_path / "s"), "--metrics-addr", "127.0.0.1:0", timeout=20,
    )  # fmt: skip
    one_line(result, 2, "--interface lo (kernel): not usable")


@pytest.mark.parametrize("command", [[IDRA, "nodes", "list"], [NODE_DAEMON, "version"]])
def test_log_flags_are_checked(command: list[str]) -> None:
    result = run(command[0], "--log-format", "yaml", *command[1:])
    one_line(result, 2, "--log-format", "'yaml' is not one of")


def test_control_plane_logs_as_json(tmp_path: Path, monkeypatch) -> None:
    """``IDRA_LOG_FORMAT=json`` (the variable of ``--log-format``): one JSON object a line."""
    monkeypatch.setenv("IDRA_LOG_FORMAT", "json")
    server = start(tmp_path)
    try:
        server.register("i-json")
    finally:
        server.process.terminate()
        server.process.wait(10)
    lines = server.log.read_text().splitlines()
    assert lines[0].startswith("control plane on")  # stdout, merged here
    entries = [json.loads(line) for line in lines[1:]]
    assert any(e["message"].startswith("node registered") for e in entries)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)


def test_node_daemon_ca_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("node-token")
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    result = run(
        NODE_DAEMON, "run", "--api-url", "https://127.0.0.1:1", "--token-file",
        str(tmp_path / "token"), "--interface", "lo", "--driver", "kernel", "--imds-url",
        f"http://127.0.0.1:{free_port()}", "--ca-file", str(tmp_path / "ca.pem"), "--region",
        "eu-west-1", "--public-ip", "203.0.113.1", "--state-dir", str(tmp_path / "s"), timeout=20,
    )  # fmt: skip
    one_line(result, 2, "--ca-file", "ca.pem", "not a PEM")


@pytest.mark.parametrize("command", ["fetch-secret", "run"])
@pytest.mark.parametrize("region", ["bad region", "eu-central-1x", ""])
def test_node_daemon_bad_region(command: str, region: str, tmp_path: Path) -> None:
    """A malformed --region is bad input (exit 2, one line), before any AWS call."""
    args = {
        "fetch-secret": ["--secret-id", "idra/staging/NODE_TOKEN", "--out", str(tmp_path / "t")],
        "run": ["--api-url", "https://cp.example", "--token-file", str(tmp_path / "t")],
    }[command]
    result = run(NODE_DAEMON, command, *args, "--region", region, env=NO_AWS, timeout=30)
    one_line(result, 2, "--region", "not an AWS region name")
    assert not (tmp_path / "t").exists()
