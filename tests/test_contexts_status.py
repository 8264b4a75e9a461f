"""``idra context`` and ``idra status`` through the installed entry point, against a real
control plane; the config file lives in the test's folder (``IDRA_CONFIG``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.controlplane.conftest import ControlPlane, module_server

IDRA = str(Path(sys.executable).parent / "idra")


cp = module_server()


def idra(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IDRA_")}
    return subprocess.run([IDRA, *args], capture_output=True, text=True, timeout=60,
                          env=base | {"IDRA_CONFIG": str(config)} | env)  # fmt: skip


def token_file(cp: ControlPlane) -> str:
    return str(cp.log.parent / "operator.token")


def test_a_context_gives_the_defaults(cp: ControlPlane, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    node = cp.register("i-context")
    assert idra(config, "nodes", "list").returncode == 2, "no context, no --api-url"
    made = idra(config, "context", "set", "here", "--api-url", cp.url, "--operator-token-file",
                token_file(cp))  # fmt: skip
    assert made.returncode == 0, made.stderr
    document = yaml.safe_load(config.read_text())
    assert document["current-context"] == "here", "the first context becomes current"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert cp.tokens["operator"] not in config.read_text(), "only the token's file"
    listed = idra(config, "nodes", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert node in {n["id"] for n in json.loads(listed.stdout)}

    # another context, chosen by --context or IDRA_CONTEXT; a flag beats the context
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token")
    idra(config, "context", "set", "other", "--api-url", cp.url, "--operator-token-file",
         str(wrong))  # fmt: skip
    assert idra(config, "--context", "other", "nodes", "list").returncode == 1
    assert idra(config, "nodes", "list", IDRA_CONTEXT="other").returncode == 1
    flag = idra(config, "--context", "other", "nodes", "list", "--operator-token-file",
                token_file(cp))  # fmt: skip
    assert flag.returncode == 0, flag.stderr
    env = idra(config, "--context", "other", "nodes", "list",
               IDRA_OPERATOR_TOKEN_FILE=token_file(cp))  # fmt: skip
    assert env.returncode == 0, "an IDRA_* variable beats the context"

    rows = json.loads(idra(config, "context", "list", "-o", "json").stdout)
    assert [(r["name"], r["current"]) for r in rows] == [("here", True), ("other", False)]
    assert idra(config, "context", "use", "other").returncode == 0
    shown = json.loads(idra(config, "context", "show", "--json").stdout)
    assert shown == {"name": "other", "api-url": cp.url, "operator-token-file": str(wrong)}
    table = idra(config, "context", "list").stdout
    assert any(line.split()[:2] == ["*", "other"] for line in table.splitlines())


@pytest.mark.parametrize(
    ("document", "text"),
    [
        ("contexts:\n  x:\n    operator-token: s3cr3t-value\n", "a token is never kept"),
        ("contexts:\n  x:\n    token: s3cr3t-value\n", "a token is never kept"),
        ("contexts:\n  x:\n    apiUrl: https://a\n", "unknown key"),
        ("contexts: [a]\n", "needs a 'contexts:' mapping"),
        ("contexts:\n  x: {api-url: [s3cr3t-value\n", "not valid YAML"),
        ("current-context: nope\ncontexts: {}\n", "--context nope: no such context"),
    ],
)
def test_bad_config_files(tmp_path: Path, document: str, text: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(document)
    result = idra(config, "nodes", "list")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr and str(config) in result.stderr
    assert "s3cr3t-value" not in result.stderr, "a secret in the file is never echoed"


def test_context_mistakes(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    result = idra(config, "context", "use", "nope")
    assert result.returncode == 2 and "no such context" in result.stderr
    assert not config.exists()
    bad_name = idra(config, "context", "set", "../x", "--api-url", "https://a")
    assert bad_name.returncode == 2 and "NAME" in bad_name.stderr
    assert idra(config, "context", "show").returncode == 2


def test_status_per_region(cp: ControlPlane, tmp_path: Path) -> None:
    config = tmp_path / "none.yaml"
    env = {"IDRA_API_URL": cp.url, "IDRA_OPERATOR_TOKEN_FILE": token_file(cp)}
    fresh = cp.register("i-stfresh", region="ap-south-1", public_ip="203.0.113.61")
    cp.heartbeat(fresh, active_peers=4)
    cp.register("i-stsilent", region="ap-south-1", public_ip="203.0.113.62")
    old = cp.register("i-stold", region="sa-east-1", public_ip="203.0.113.63")
    with cp.client("operator") as ops:
        assert ops.post("/node/drain", json={"id": old, "reason": "manual"}).status_code == 202
    result = idra(config, "status", "-o", "json", "--max-drain", "0s", "--silent-after", "1h",
                  **env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {r["region"]: r for r in json.loads(result.stdout)}
    ap, sa = rows["ap-south-1"], rows["sa-east-1"]
    assert (ap["active"], ap["draining"], ap["active_peers"], ap["silent"]) == (2, 0, 4, 1)
    assert ap["newest_heartbeat_at"].endswith("Z") and ap["past_drain_deadline"] == []
    assert (sa["active"], sa["draining"], sa["past_drain_deadline"]) == (0, 1, [old])
    later = json.loads(idra(config, "status", "--json", **env).stdout)
    assert {r["region"]: r for r in later}["sa-east-1"]["past_drain_deadline"] == []

    watched = idra(config, "status", "--watch", "--interval", "1", "--runs", "2", **env)
    assert watched.returncode == 0, watched.stderr
    titles = [line for line in watched.stdout.splitlines() if " nodes in " in line]
    assert len(titles) == 2, "two screens, then it stopped"
    table = watched.stdout.splitlines()
    assert table[1].split()[:3] == ["region", "active", "draining"]
    row = next(line for line in table if line.startswith("ap-south-1 "))
    assert "4 active" in row and "s ago" in row


def test_a_context_with_a_stack_takes_its_control_plane_url(tmp_path: Path) -> None:
    from idra.config import REPO_ROOT

    text = (REPO_ROOT / "Pulumi.staging.yaml").read_text()
    url = "https://127.0.0.1:1"
    text = text.replace("https://api.staging.idra.example/", url)
    (tmp_path / "Pulumi.staging.yaml").write_text(text)
    (tmp_path / "t").write_text("token")
    config = tmp_path / "config.yaml"
    config.write_text(f"current-context: s\ncontexts:\n  s:\n    stack: staging\n"
                      f"    operator-token-file: {tmp_path / 't'}\n")  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.startswith("IDRA_")}
    result = subprocess.run([IDRA, "nodes", "list"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env=base | {"IDRA_CONFIG": str(config)})  # fmt: skip
    assert result.returncode == 1 and f"GET {url}/v1/nodes" in result.stderr, result.stderr


def test_context_names_complete_in_the_shell(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("contexts:\n  prod-eu: {stack: production}\n  staging: {}\n")
    words = {"_IDRA_COMPLETE": "bash_complete", "COMP_WORDS": "idra context use pr",
             "COMP_CWORD": "3"}  # fmt: skip
    reply = idra(config, **words)
    assert reply.stdout.split() == ["plain,prod-eu"]


def test_status_with_a_context_stack_from_any_folder(cp: ControlPlane, tmp_path: Path) -> None:
    """A context's stack gives the drain deadline where its file is, and is no error
    elsewhere; a --stack given on the command line must exist."""
    config = tmp_path / "config.yaml"
    config.write_text(f"contexts:\n  c:\n    api-url: {cp.url}\n    operator-token-file: "
                      f"{token_file(cp)}\n    stack: staging\ncurrent-context: c\n")  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.startswith("IDRA_")}
    env = base | {"IDRA_CONFIG": str(config)}
    run = {"capture_output": True, "text": True, "timeout": 60, "env": env}
    elsewhere = subprocess.run([IDRA, "status"], cwd=tmp_path, **run)
    assert elsewhere.returncode == 0, elsewhere.stderr
    explicit = subprocess.run([IDRA, "status", "--stack", "staging"], cwd=tmp_path, **run)
    assert explicit.returncode == 2 and "no such stack file" in explicit.stderr
