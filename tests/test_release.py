"""Agent releases are real: the build is byte-identical from any virtualenv, the stacks pin
this tree's build, and ``idra release pin`` (the installed CLI) writes exactly that pin."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from idra.config import REPO_ROOT, load_stack
from idra.release import RELEASE_URL, set_keys, tree_tag

IDRA = Path(sys.executable).with_name("idra")
BUILD = REPO_ROOT / "agent" / "build.py"
SHIV = "shiv==1.0.8"


def _venv(folder: Path) -> Path:
    """A fresh virtualenv with only what the build needs (shiv), as a release runner has."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    subprocess.run([str(folder / "bin/python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", SHIV],
                   check=True, timeout=300, env=env, capture_output=True)  # fmt: skip
    return folder / "bin/python"


def _build(python: Path, out: Path) -> bytes:
    subprocess.run([str(python), str(BUILD), "--out", str(out)], check=True, timeout=300,
                   capture_output=True)  # fmt: skip
    return (out / "node-daemon.pyz").read_bytes()


@pytest.fixture(scope="module")
def tree_build(tmp_path_factory) -> str:
    """This tree's agent, built from two virtualenvs at different paths: byte-identical
    (console-script shebangs and installer records used to carry the builder's paths)."""
    base = tmp_path_factory.mktemp("builds")
    first = _build(_venv(base / "a" / "venv"), base / "out-a")
    second = _build(_venv(base / "elsewhere" / "deeper" / "env"), base / "out-b")
    assert first == second, "the same tree built twice gave different bytes"
    digest = hashlib.sha256(first).hexdigest()
    assert (base / "out-a" / "node-daemon.pyz.sha256").read_text() == (
        f"{digest}  node-daemon.pyz\n"
    )
    return digest


def test_the_build_is_reproducible_across_virtualenvs(tree_build: str) -> None:
    assert len(tree_build) == 64


@pytest.mark.parametrize("stack", ["staging", "production"])
def test_a_stack_pinning_this_trees_version_pins_its_build(stack: str, tree_build: str) -> None:
    """A pin of this tree's release with any other sha256 would fail closed on every node."""
    cfg = load_stack(stack)
    match = RELEASE_URL.match(cfg.agent_url)
    assert match, cfg.agent_url
    tag = cfg.agent_url.split("/")[-2]
    if tag == tree_tag():
        assert cfg.agent_sha256 == tree_build, (
            f"Pulumi.{stack}.yaml pins {tag} with another sha256; run "
            f"'idra release pin --stack {stack} --version {tag}'"
        )


def _stack_copy(tmp_path: Path, sha256: str = "0" * 64) -> Path:
    shutil.copy(REPO_ROOT / "Pulumi.staging.yaml", tmp_path / "Pulumi.staging.yaml")
    path = tmp_path / "Pulumi.staging.yaml"
    path.write_text(set_keys(path.read_text(), {"agentSha256": f'"{sha256}"'}))
    return path


def _pin(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(IDRA), "release", "pin", "--cwd", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def test_pin_builds_and_writes_only_the_two_keys(tmp_path: Path, tree_build: str) -> None:
    path = _stack_copy(tmp_path)
    before = path.read_text().splitlines()
    result = _pin(tmp_path, "--stack", "staging", "--version", tree_tag(),
                  "--out", str(tmp_path / "dist"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    after = path.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert changed == [(f'  idra:agentSha256: "{"0" * 64}"', f'  idra:agentSha256: "{tree_build}"')]
    assert f"idra:agentSha256 {tree_build}" in result.stdout
    built = (tmp_path / "dist" / "node-daemon.pyz").read_bytes()
    assert hashlib.sha256(built).hexdigest() == tree_build
    cfg = load_stack("staging", tmp_path)
    assert cfg.agent_url.endswith(f"/download/{tree_tag()}/node-daemon.pyz")


def test_pin_refuses_another_version_and_leaves_the_file(tmp_path: Path) -> None:
    path = _stack_copy(tmp_path)
    before = path.read_text()
    result = _pin(tmp_path, "--stack", "staging", "--version", "v9.9.9")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: --version v9.9.9: this tree builds node-daemon {tree_tag()[1:]} "
        f"(agent/node_daemon/__init__.py); pin {tree_tag()} or check out v9.9.9"
    ]
    assert path.read_text() == before


def test_production_copies_stagings_pin_without_a_build(tmp_path: Path) -> None:
    """After staging is healthy, production gets exactly staging's agent."""
    staging = _stack_copy(tmp_path, "a" * 64)
    shutil.copy(REPO_ROOT / "Pulumi.production.yaml", tmp_path / "Pulumi.production.yaml")
    result = _pin(tmp_path, "--stack", "production", "--from-stack", "staging")
    assert result.returncode == 0, result.stderr
    production = load_stack("production", tmp_path)
    assert production.agent_sha256 == "a" * 64
    assert production.agent_url == load_stack("staging", tmp_path).agent_url
    assert staging.read_text().count("a" * 64) == 1


def test_a_pin_that_would_not_load_is_not_written(tmp_path: Path) -> None:
    path = _stack_copy(tmp_path)
    before = path.read_text()
    result = _pin(tmp_path, "--stack", "staging", "--version", tree_tag(),
                  "--url", "http://example.com/node-daemon.pyz")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: Pulumi.staging.yaml: the pinned file would not load: "
        "Pulumi.staging.yaml: idra:agentUrl: must be an https:// URL"
    ]
    assert path.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "Pulumi.staging.yaml"], "no temp left"


def test_set_keys_keeps_comments_and_adds_a_missing_key() -> None:
    text = "# top\nconfig:\n  # a comment\n  idra:minSize: 1 # why\n"
    assert set_keys(text, {"agentSha256": "f" * 64}) == text + f"  idra:agentSha256: {'f' * 64}\n"
    assert set_keys(text, {"minSize": "2"}) == "# top\nconfig:\n  # a comment\n  idra:minSize: 2\n"
