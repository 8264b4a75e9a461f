"""``node-daemon`` checks its inputs before it touches the interface or the network
(issue 26, item 5): each mistake is exit 2 and one stderr line naming the flag, no
traceback. Every case runs the installed entry point, with an interface that does not
exist, so a check done after the interface's would report the interface instead."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import node_daemon
from tests.controlplane.conftest import free_port

NODE_DAEMON = str(Path(sys.executable).parent / "node-daemon")


def node_daemon_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IDRA_"))}
    return subprocess.run([NODE_DAEMON, *args], capture_output=True, text=True, timeout=30, env=env)


def one_line(result: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit 2, one stderr line holding each of ``expected``, no traceback."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def run_args(tmp_path: Path, **changes: str) -> list[str]:
    """``run`` with good inputs (``changes`` replace some) and a missing interface."""
    token = tmp_path / "token"
    token.write_text("node-token\n")
    flags = {
        "--api-url": f"http://127.0.0.1:{free_port()}",
        "--token-file": str(token),
        "--interface": "nosuch0",
        "--imds-url": f"http://127.0.0.1:{free_port()}",
        "--public-ip": "203.0.113.1",
        "--metrics-addr": "127.0.0.1:0",
        "--state-dir": str(tmp_path / "state"),
    } | changes
    return ["run", *(part for pair in flags.items() for part in pair)]


def test_good_inputs_reach_the_interface_check(tmp_path: Path) -> None:
    """The baseline of the cases below: nothing wrong but the interface."""
    one_line(node_daemon_cli(*run_args(tmp_path)), "--interface nosuch0", "no such interface")


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--token-file", "/nonexistent/token", "no such file"),
        ("--token-file", "/", "is a directory"),
        ("--api-url", "http://cp.example", "must be https://"),
        ("--api-url", "ftp://127.0.0.1/", "not an https:// URL"),
        ("--api-url", "cp.example", "not an https:// URL"),
        ("--metrics-addr", "127.0.0.1", "expected HOST:PORT"),
        ("--metrics-addr", "127.0.0.1:99999", "port out of range"),
        ("--metrics-addr", "10.0.0.1:9586", "loopback only"),
        ("--metrics-addr", "localhost:9586", "not an IP address"),
        ("--public-ip", "999.1.1.1", "not an IP address"),
        ("--public-ip", "0.0.0.0", "not a unicast address"),
        ("--state-dir", "/proc/node-daemon", "--state-dir"),
    ],
)
def test_run_refuses_bad_input_before_the_interface(
    tmp_path: Path, flag: str, value: str, expected: str
) -> None:
    result = node_daemon_cli(*run_args(tmp_path, **{flag: value}))
    one_line(result, flag, expected)


def test_empty_token_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    result = node_daemon_cli(*run_args(tmp_path, **{"--token-file": str(tmp_path / "empty")}))
    one_line(result, "--token-file", "empty")


def test_allow_http_is_the_documented_way_to_a_plain_http_control_plane(tmp_path: Path) -> None:
    result = node_daemon_cli(*run_args(tmp_path, **{"--api-url": "http://cp.example"}),
                             "--allow-http")  # fmt: skip
    one_line(result, "--interface nosuch0", "no such interface")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("{}", "no 'peers' list"),
        ('{"peers": {}}', "no 'peers' list"),
        ('{"peers": [], "removed": 3}', "'removed' is not a list"),
        ("[]", "not a peers document"),
        ("{not json", "not JSON"),
        ("[" * 100_000, "not JSON"),
    ],
)
def test_sync_refuses_a_bad_peers_file_before_the_interface(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    peers = tmp_path / "peers.json"
    if content is not None:
        peers.write_text(content)
    result = node_daemon_cli("sync", "--interface", "nosuch0", "--peers", str(peers))
    one_line(result, f"--peers {peers}", expected)


def test_sync_bad_client_pool(tmp_path: Path) -> None:
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"peers": []}))
    result = node_daemon_cli("sync", "--interface", "nosuch0", "--peers", str(peers),
                             "--client-pool", "10.96.0.1/12")  # fmt: skip
    one_line(result, "--client-pool", "host bits set")


@pytest.mark.parametrize("args", [["--version"], ["version"]])
def test_version(args: list[str]) -> None:
    result = node_daemon_cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == node_daemon.__version__
    assert result.stderr == ""


def test_metrics_address_in_use(env) -> None:
    """With everything else right (a real interface), a taken metrics port is exit 2
    naming the flag, not a traceback from the metrics server."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = node_daemon_cli(
            *run_args(env.tmp, **{"--api-url": env.cp.url, "--interface": env.wg,
                                  "--imds-url": env.imds_url, "--metrics-addr": address}),
            "--driver", "uapi", "--interface-netns", env.node.name,
        )  # fmt: skip
    one_line(result, f"--metrics-addr {address}", "in use")
