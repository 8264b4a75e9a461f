"""The canary's WireGuard key (made once, owner-only) and its state: the peers it set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from idra.lifecycle.canary import load_peers, load_state, save_state
from idra.lifecycle.identity import load_or_create
from idra.netns import run


def test_key_made_once_owner_only_and_a_real_wireguard_key(tmp_path: Path) -> None:
    path = tmp_path / "state" / "canary.key"
    private, public = load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert run(["wg", "pubkey"], input=private).stdout.strip() == public
    assert load_or_create(path) == (private, public), "the same key on every run"
    assert [p.name for p in path.parent.iterdir()] == ["canary.key"], "no temporary left"


@pytest.mark.parametrize(
    ("mode", "text", "error"),
    [
        (0o644, None, "only its owner"),
        (0o600, "not a key\n", "not a WireGuard private key"),
        (0o600, "AAAA\n", "not a WireGuard private key"),
    ],
)
def test_an_unsafe_or_bad_key_is_refused(tmp_path: Path, mode, text, error) -> None:
    path = tmp_path / "canary.key"
    load_or_create(path)
    if text is not None:
        path.write_text(text)
    path.chmod(mode)
    with pytest.raises(ValueError, match=error) as refused:
        load_or_create(path)
    assert str(refused.value).startswith(f"--key-file {path}:")


def test_state_keeps_the_nodes_with_a_canary_peer(tmp_path: Path) -> None:
    path = tmp_path / "canary.json"
    save_state(path, {"node-a": 1}, {"node-b", "node-a"})
    assert load_state(path) == {"node-a": 1} and load_peers(path) == {"node-a", "node-b"}
    path.write_text(json.dumps({"listed_runs": {}}))  # a state file of an older canary
    assert load_peers(path) == set()
    path.write_text(json.dumps({"listed_runs": {}, "canary_peers": "node-a"}))
    with pytest.raises(ValueError, match="not a canary state file"):
        load_peers(path)


def _canary(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "probes.yaml").write_text(
        "targets:\n  - {name: s, url: 'http://127.0.0.1:9/', blocked: {status: [403]}}\n"
    )
    (tmp_path / "operator.token").write_text("operator-token-0123456789")
    return subprocess.run(
        [sys.executable, "-m", "idra.cli", "canary", "--api-url", "http://127.0.0.1:9",
         "--operator-token-file", str(tmp_path / "operator.token"),
         "--probes", str(tmp_path / "probes.yaml"), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_probes_without_a_place_for_the_key_exit_2(tmp_path: Path) -> None:
    result = _canary(tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--state-file or --key-file" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the tunnels need root")
def test_a_world_readable_key_exits_2_before_any_call(tmp_path: Path) -> None:
    key = tmp_path / "canary.key"
    load_or_create(key)
    key.chmod(0o644)
    result = _canary(tmp_path, "--key-file", str(key))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(f"--key-file {key}: must be a file only its owner "
                                          "can read (chmod 600)")  # fmt: skip
    assert key.read_text().strip() not in result.stderr
    bad_url = _canary(tmp_path, "--state-file", str(tmp_path / "s.json"), "--whoami-url", "x")
    assert bad_url.returncode == 2 and "--whoami-url x" in bad_url.stderr
    key.chmod(0o600)
    bad_dns = _canary(tmp_path, "--key-file", str(key), "--tunnel-dns", "1.1.1.1\nsearch x")
    assert bad_dns.returncode == 2 and "--tunnel-dns" in bad_dns.stderr
