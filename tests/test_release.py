"""Releases are real: both artifacts (the agent ``node-daemon.pyz`` and the ops service's
``idra-ops.pyz``) build byte-identical from any virtualenv, the stacks pin this tree's
builds, and ``idra release pin`` (the installed CLI) writes exactly those pins."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from idra.config import REPO_ROOT, StackConfig, load_stack
from idra.release import RELEASE_URL, ops_release_url, set_keys, tree_tag

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


def _build(python: Path, out: Path, artifact: str) -> bytes:
    subprocess.run([str(python), str(BUILD), "--out", str(out), "--artifact", artifact],
                   check=True, timeout=300, capture_output=True)  # fmt: skip
    return (out / f"{artifact}.pyz").read_bytes()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """This tree's two artifacts, each built from two virtualenvs at different paths:
    byte-identical (console-script shebangs and installer records used to carry the
    builder's paths), and no builder path inside. The folder holding one build of each."""
    base = tmp_path_factory.mktemp("builds")
    pythons = {"a": _venv(base / "a" / "venv"), "b": _venv(base / "elsewhere" / "deeper" / "env")}
    for artifact in ("node-daemon", "idra-ops"):
        first, second = (_build(python, base / f"out-{label}", artifact)
                         for label, python in pythons.items())  # fmt: skip
        assert first == second, f"{artifact}: the same tree built twice gave different bytes"
        digest = hashlib.sha256(first).hexdigest()
        assert (base / "out-a" / f"{artifact}.pyz.sha256").read_text() == (
            f"{digest}  {artifact}.pyz\n"
        )
        with zipfile.ZipFile(base / "out-a" / f"{artifact}.pyz") as archive:
            names = archive.namelist()
            inside = b"".join(archive.read(n) for n in names if not n.endswith((".so", ".a")))
        for builder in (str(base), str(REPO_ROOT), sys.prefix):
            assert builder.encode() not in inside, f"{artifact} names the builder's {builder}"
        assert not [n for n in names if "/bin/" in n or n.endswith("/RECORD")], artifact
    return base / "out-a"


@pytest.fixture(scope="module")
def builds(built: Path) -> dict[str, str]:
    """Artifact name -> sha256 of this tree's build."""
    return {name: hashlib.sha256((built / f"{name}.pyz").read_bytes()).hexdigest()
            for name in ("node-daemon", "idra-ops")}  # fmt: skip


def test_the_build_is_reproducible_across_virtualenvs(builds: dict[str, str]) -> None:
    assert len(builds["node-daemon"]) == len(builds["idra-ops"]) == 64


def test_the_ops_zipapp_holds_idra_its_templates_and_compiled_deps_for_the_image(
    built: Path,
) -> None:
    """The ops instance runs ``python3 idra-ops.pyz ops run``: idra's CLI is the entry point,
    the node templates ship with it, and compiled wheels are the ops image's (musl)."""
    path = built / "idra-ops.pyz"
    assert path.stat().st_size <= 25 * 1024 * 1024
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        environment = archive.read("environment.json").decode()
    assert '"entry_point": "idra.cli:main"' in environment
    assert {"site-packages/idra/cli.py", "site-packages/idra/lifecycle/ops_command.py",
            "site-packages/idra/templates/ops-user-data.yaml.j2",
            "site-packages/node_daemon/cli.py"} <= names  # fmt: skip
    compiled = [n for n in names if n.endswith(".so") and "/pydantic_core/" in n]
    assert compiled and all("cpython-312-x86_64-linux-musl" in n for n in compiled), compiled
    assert not [n for n in names if n.startswith("site-packages/pulumi")], "no Pulumi SDK"


ARTIFACTS = [("agent", "node-daemon"), ("ops", "idra-ops")]


def check_pin(cfg: StackConfig, prefix: str, artifact: str, builds: dict[str, str]) -> None:
    """``cfg`` pins ``artifact``; if this tree's version, then this tree's build."""
    stack = cfg.stack
    url, sha256 = getattr(cfg, f"{prefix}_url"), getattr(cfg, f"{prefix}_sha256")
    assert url and RELEASE_URL.match(url), f"Pulumi.{stack}.yaml: idra:{prefix}Url {url}"
    assert url.endswith(f"/{artifact}.pyz")
    tag = url.split("/")[-2]
    if tag == tree_tag():
        assert sha256 == builds[artifact], (
            f"Pulumi.{stack}.yaml pins {artifact} {tag} with another sha256; run "
            f"'idra release pin --stack {stack} --version {tag}'"
        )


@pytest.mark.parametrize("stack", ["staging", "production"])
@pytest.mark.parametrize(("prefix", "artifact"), ARTIFACTS)
def test_a_stack_pinning_this_trees_version_pins_its_build(
    stack: str, prefix: str, artifact: str, builds: dict[str, str]
) -> None:
    """A pin of this tree's release with any other sha256 would fail closed on every node
    (agent) or on the ops instance (ops). Both stacks deploy the ops group: both pin it."""
    check_pin(load_stack(stack), prefix, artifact, builds)


@pytest.mark.parametrize(("prefix", "artifact"), ARTIFACTS)
def test_a_stack_pinning_another_sha256_for_this_version_fails(
    prefix: str, artifact: str, tmp_path: Path, builds: dict[str, str]
) -> None:
    """The check above is not vacuous: this tree's version with another sha256 fails."""
    _stack_copy(tmp_path, **{prefix: "e" * 64})
    cfg = load_stack("staging", tmp_path)
    assert getattr(cfg, f"{prefix}_url").split("/")[-2] == tree_tag()
    with pytest.raises(AssertionError, match=f"pins {artifact} {tree_tag()} with another"):
        check_pin(cfg, prefix, artifact, builds)


def _stack_copy(tmp_path: Path, agent: str = "0" * 64, ops: str = "0" * 64) -> Path:
    shutil.copy(REPO_ROOT / "Pulumi.staging.yaml", tmp_path / "Pulumi.staging.yaml")
    path = tmp_path / "Pulumi.staging.yaml"
    keys = {"agentSha256": f'"{agent}"', "opsSha256": f'"{ops}"'}
    path.write_text(set_keys(path.read_text(), keys))
    return path


def _pin(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(IDRA), "release", "pin", "--cwd", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def test_pin_builds_and_writes_only_the_pins(tmp_path: Path, builds: dict[str, str]) -> None:
    path = _stack_copy(tmp_path)
    before = path.read_text().splitlines()
    result = _pin(tmp_path, "--stack", "staging", "--version", tree_tag(),
                  "--out", str(tmp_path / "dist"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    after = path.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    zero = "0" * 64
    assert changed == [
        (f'  idra:agentSha256: "{zero}"', f'  idra:agentSha256: "{builds["node-daemon"]}"'),
        (f'  idra:opsSha256: "{zero}"', f'  idra:opsSha256: "{builds["idra-ops"]}"'),
    ]
    assert f"idra:opsSha256 {builds['idra-ops']}" in result.stdout
    for artifact, digest in builds.items():
        built = (tmp_path / "dist" / f"{artifact}.pyz").read_bytes()
        assert hashlib.sha256(built).hexdigest() == digest
    cfg = load_stack("staging", tmp_path)
    assert cfg.agent_url.endswith(f"/download/{tree_tag()}/node-daemon.pyz")
    assert cfg.ops_url.endswith(f"/download/{tree_tag()}/idra-ops.pyz")


def test_a_first_ops_pin_goes_beside_the_agent(tmp_path: Path) -> None:
    """A stack without an ops pin gets idra-ops.pyz of the agent's release."""
    current = "https://github.com/o/r/releases/download/v0.0.9/node-daemon.pyz"
    assert ops_release_url(current, None, "v0.1.0") == (
        "https://github.com/o/r/releases/download/v0.1.0/idra-ops.pyz"
    )


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
    staging = _stack_copy(tmp_path, "a" * 64, "b" * 64)
    shutil.copy(REPO_ROOT / "Pulumi.production.yaml", tmp_path / "Pulumi.production.yaml")
    result = _pin(tmp_path, "--stack", "production", "--from-stack", "staging")
    assert result.returncode == 0, result.stderr
    production = load_stack("production", tmp_path)
    assert (production.agent_sha256, production.ops_sha256) == ("a" * 64, "b" * 64)
    assert production.agent_url == load_stack("staging", tmp_path).agent_url
    assert production.ops_url == load_stack("staging", tmp_path).ops_url
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
