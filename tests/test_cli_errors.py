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

from idra.config import REPO_ROOT
from tests.controlplane.conftest import ControlPlane, free_port, module_server, start, write_token

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


cp = module_server()


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
        write_token(tmp_path / f"{kind}.token", f"{kind}-token-0123456789abcdef")
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


@pytest.mark.parametrize(
    ("listen", "text"),
    [("nohost:8443", "IP address"), ("127.0.0.1:99999", "port out of range"),
     ("127.0.0.1:0", "port out of range"), ("127.0.0.1", "expected HOST:PORT")],
)  # fmt: skip
def test_serve_bad_listen(tmp_path: Path, listen: str, text: str) -> None:
    one_line(run(*_serve(tmp_path, "--db", str(tmp_path / "cp.db"), "--listen", listen)), 2,
             "--listen", text)  # fmt: skip


def test_serve_iid_cert_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    (tmp_path / "hostname").write_text("node-1\n")
    args = ["--iid-cert-file", str(tmp_path / "hostname"), "--aws-account", "000000000000"]
    result = run(*_serve(tmp_path, "--db", str(tmp_path / "cp.db"), *args))
    line = one_line(result, 2, "--iid-cert-file", str(tmp_path / "hostname"), "not a PEM")
    assert "cryptography" not in line and "http" not in line


@pytest.mark.parametrize("option", ["--metrics-token-file", "--node-token-file"])
def test_serve_token_file_others_can_read(tmp_path: Path, option: str) -> None:
    args = _serve(tmp_path, "--db", str(tmp_path / "cp.db"))
    write_token(tmp_path / "metrics.token", "metrics-token-0123456789abcdef")
    args += ["--metrics-token-file", str(tmp_path / "metrics.token")]
    token = Path(args[args.index(option) + 1])
    token.chmod(0o644)
    one_line(run(*args), 2, option, str(token), "0644", "chmod 600")


def test_serve_metrics_token_equal_to_another(tmp_path: Path) -> None:
    args = _serve(tmp_path, "--db", str(tmp_path / "cp.db"))
    args += ["--metrics-token-file", str(tmp_path / "operator.token")]
    one_line(run(*args), 2, "tokens must all differ")


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--header-timeout", "0"), ("--header-timeout", "11"), ("--max-connections", "3"),
     ("--max-connections-per-client", "0"), ("--max-long-polls", "0")],
)  # fmt: skip
def test_serve_bad_limits(tmp_path: Path, flag: str, value: str) -> None:
    one_line(run(*_serve(tmp_path, "--db", str(tmp_path / "cp.db"), flag, value)), 2, flag)


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
    entries = [json.loads(line) for line in server.log.read_text().splitlines()]
    assert entries[0]["message"].startswith("control plane on")  # stdout, merged here
    assert entries[0]["event"] == "listening"
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


# -- issue 26: operator experience -----------------------------------------------------


def test_render_a_stack_that_does_not_exist_lists_those_that_do(tmp_path: Path) -> None:
    result = run(IDRA, "render", "--stack", "prod", "--out", str(tmp_path / "out"), "--cwd",
                 str(REPO_ROOT))  # fmt: skip
    one_line(result, 2, "Pulumi.prod.yaml", "no such stack file",
             "stacks here: production, staging")  # fmt: skip
    empty = run(IDRA, "render", "--stack", "prod", "--out", str(tmp_path / "o"), cwd=tmp_path)
    one_line(empty, 2, "no stack files here")


@pytest.mark.parametrize("command", ["reap --fleet aws", "rollout --dry-run"])
def test_stack_file_is_read_from_the_current_folder(cp: ControlPlane, tmp_path: Path,
                                                    command: str) -> None:  # fmt: skip
    """Not from next to the installed package: a folder without the file says so, and
    the file that is there is the one read (--cwd elsewhere works the same)."""
    args = [*command.split(), *ops(cp), "--stack", "staging"]
    missing = run(IDRA, *args, cwd=tmp_path, env=NO_AWS)
    one_line(missing, 2, f"{tmp_path}/Pulumi.staging.yaml", "no such stack file")
    text = (REPO_ROOT / "Pulumi.staging.yaml").read_text()
    (tmp_path / "Pulumi.staging.yaml").write_text(text.replace("maxDrainSeconds", "nope"))
    for where in ({"cwd": tmp_path}, {"cwd": REPO_ROOT, "extra": ["--cwd", str(tmp_path)]}):
        result = run(IDRA, *args, *where.get("extra", []), cwd=where["cwd"], env=NO_AWS)
        one_line(result, 2, "Pulumi.staging.yaml", "idra:nope", "unknown key")
    good = run(IDRA, *args, "--cwd", str(REPO_ROOT), cwd=tmp_path, env=NO_AWS)
    assert "Pulumi.staging.yaml" not in good.stderr and good.returncode in (0, 1), good.stderr


def test_https_to_a_plain_http_control_plane_gets_a_hint(cp: ControlPlane) -> None:
    url = cp.url.replace("http://", "https://")
    result = run(IDRA, "nodes", "list", "--api-url", url, *ops(cp)[2:])
    one_line(result, 1, "WRONG_VERSION_NUMBER", "hint", "plain http://")


def test_untrusted_certificate_gets_a_hint(tmp_path: Path) -> None:
    server = start(tmp_path, tls=True)
    try:
        result = run(IDRA, "nodes", "list", "--api-url", server.url, "--operator-token-file",
                     str(tmp_path / "operator.token"))  # fmt: skip
    finally:
        server.process.terminate()
        server.process.wait(10)
    one_line(result, 1, "CERTIFICATE_VERIFY_FAILED", "hint", "--ca-file")


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["nodes", "drain"], 2, "give node IDs or a selector"),
        (["nodes", "drain", "node-x", "--region", "eu-central-1"], 2, "not both"),
        (["nodes", "drain", "--older-than", "a while"], 2, "--older-than"),
        (["nodes", "list", "--json", "-o", "wide"], 2, "--json and -o wide"),
        (["nodes", "list", "-o", "xml"], 2, "'xml' is not one of"),
        (["nodes", "show", "node-nope"], 1, "node-nope: no such node"),
        (["nodes", "delete", "node-nope", "--yes"], 1, "node-nope: no such node"),
    ],
)
def test_nodes_mistakes(cp: ControlPlane, args: list[str], code: int, text: str) -> None:
    one_line(run(IDRA, *args, *ops(cp)), code, text)


def test_show_with_v1_in_the_url_says_so(cp: ControlPlane) -> None:
    node = cp.register("i-v1show")
    result = run(IDRA, "nodes", "show", node, "--api-url", cp.url + "/v1", *ops(cp)[2:])
    one_line(result, 1, "not a node", "without /v1")


@pytest.mark.parametrize("verb", ["drain", "delete"])
def test_destructive_commands_need_yes_off_a_terminal(cp: ControlPlane, verb: str) -> None:
    """Off a terminal without --yes: what it would do on stderr, then one error line,
    exit 2, and nothing changed."""
    node = cp.register(f"i-yes{verb}")
    args = ["--force", "--fleet", "lab"] if verb == "delete" else []
    result = run(IDRA, "nodes", verb, node, *args, *ops(cp))
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"will {verb} {node} (eu-central-1, active")
    assert lines[-1].startswith("Error:") and "--yes" in lines[-1] and len(lines) == 2
    with cp.client("operator") as client:
        assert client.get(f"/v1/nodes/{node}").json()["state"] == "active"


def test_json_logs_hold_errors_and_progress_with_fields(cp: ControlPlane) -> None:
    """``--log-format json``: the error line and the canary's progress lines are JSON
    objects too, with ``event``, ``node_id`` and ``region``."""
    failed = run(IDRA, "--log-format", "json", "nodes", "show", "node-nope", *ops(cp))
    (error,) = [json.loads(line) for line in failed.stderr.splitlines()]
    assert failed.returncode == 1 and error["level"] == "error" and error["event"] == "error"
    assert error["message"] == "node-nope: no such node"
    usage = run(IDRA, "--log-format", "json", "nodes", "list", "--state", "gone", *ops(cp))
    assert usage.returncode == 2 and json.loads(usage.stderr)["message"].startswith(
        "idra nodes list: "
    )

    from tests.lifecycle.dns_server import start as start_dns

    node = cp.register("i-jsonlog", region="eu-central-1", public_ip="203.0.113.78")
    dns, _, _, address = start_dns("zen.test.example")
    try:
        result = run(IDRA, "--log-format", "json", "canary", *ops(cp), "--dnsbl",
                     "zen.test.example", "--nameserver", address, "--json")  # fmt: skip
    finally:
        dns.stop()
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    mine = [e for e in entries if e.get("node_id") == node]
    assert mine and mine[0]["event"] == "canary.checked" and mine[0]["region"] == "eu-central-1"
    assert mine[0]["verdict"] == "clean" and mine[0]["message"].startswith("checked ")


def test_debug_logs_leave_the_libraries_out_unless_asked(cp: ControlPlane) -> None:
    quiet = run(IDRA, "--log-level", "debug", "nodes", "list", *ops(cp))
    assert quiet.returncode == 0 and "httpcore" not in quiet.stderr
    loud = run(IDRA, "--log-level", "debug", "--log-libraries", "nodes", "list", *ops(cp))
    assert loud.returncode == 0 and "httpcore" in loud.stderr


def test_json_logs_hold_the_drain_plan(cp: ControlPlane) -> None:
    node = cp.register("i-jsonplan", region="eu-central-1")
    result = run(IDRA, "--log-format", "json", "nodes", "drain", node, *ops(cp))
    plan, error = (json.loads(line) for line in result.stderr.splitlines())
    assert result.returncode == 2 and error["event"] == "error" and "--yes" in error["message"]
    assert plan["event"] == "nodes.drain.plan" and plan["node_id"] == node
    assert plan["region"] == "eu-central-1"
