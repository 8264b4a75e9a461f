"""A plain (non-editable) ``pip install .`` into a fresh venv renders both stacks: the
templates are package data, and the stack file is read from the current folder (by
render, reap, rollout and status alike)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from idra.config import REPO_ROOT, load_stack
from idra.render import NODE_FILES, render_node_files

SOURCES = ("pyproject.toml", "README.md", "idra", "infra", "agent", "templates")


def test_the_package_list_covers_the_source_tree() -> None:
    listed = set(
        tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {"idra.templates"}
    for top, root in (("idra", REPO_ROOT / "idra"), ("infra", REPO_ROOT / "infra"),
                      ("node_daemon", REPO_ROOT / "agent" / "node_daemon")):  # fmt: skip
        for init in root.rglob("__init__.py"):
            found.add(".".join([top, *init.parent.relative_to(root).parts]))
    assert listed == found


@pytest.mark.timeout(600)
def test_plain_install_renders_both_stacks(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO_ROOT / name
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy(path, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, check=False, timeout=540,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    shutil.rmtree(source)  # nothing may come from the source tree any more

    project = tmp_path / "project"
    project.mkdir()
    for stack in ("staging", "production"):
        shutil.copy(REPO_ROOT / f"Pulumi.{stack}.yaml", project)
        out = tmp_path / stack
        result = subprocess.run(
            [venv / "bin" / "idra", "render", "--stack", stack, "--out", str(out)],
            cwd=project, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"stack file: {project}/Pulumi.{stack}.yaml" in result.stderr
        expected = render_node_files(load_stack(stack))
        for name in NODE_FILES:
            assert (out / name).read_text() == expected[name], name
    for command in ("reap --fleet aws", "rollout", "status"):  # also read the current folder
        args = [venv / "bin" / "idra", *command.split(), "--stack", "staging", "--api-url",
                "http://127.0.0.1:9", "--operator-token-file", "/nonexistent"]  # fmt: skip
        here = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert here.returncode == 2, here.stderr
        assert f"{tmp_path}/Pulumi.staging.yaml: no such stack file" in here.stderr
        there = subprocess.run(args, cwd=project, capture_output=True, text=True, check=False)
        assert "--operator-token-file /nonexistent" in there.stderr, "read the project's file"
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import idra.render as r; print(r.TEMPLATES)"],
        cwd=project, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(venv)), "templates come from the installed package"
