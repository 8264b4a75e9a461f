"""GitHub workflows validate against the workflow schema and do what operators rely on."""

from __future__ import annotations

from pathlib import Path

import yaml

from idra.config import REPO_ROOT
from idra.netns import run

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
WORKFLOW = WORKFLOWS / "lifecycle.yml"


def test_every_workflow_is_schema_valid() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) >= 2
    result = run(
        [
            str(Path(REPO_ROOT, ".venv/bin/check-jsonschema")),
            "--builtin-schema",
            "vendor.github-workflows",
            *files,
        ],
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_release_builds_and_attaches_the_agent() -> None:
    release = yaml.safe_load((WORKFLOWS / "release.yml").read_text())
    assert release[True]["push"]["tags"] == ["v*"]
    steps = " ".join(str(step) for step in release["jobs"]["agent"]["steps"])
    assert "agent/build.py" in steps and "node-daemon.pyz.sha256" in steps


def test_scheduled_with_oidc_for_both_stacks() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow[True]["schedule"]  # YAML 1.1 reads the key "on" as True
    assert workflow["permissions"]["id-token"] == "write"
    job = workflow["jobs"]["canary-and-reaper"]
    stacks = {entry["stack"] for entry in job["strategy"]["matrix"]["include"]}
    assert stacks == {"staging", "production"}
    commands = " ".join(step.get("run", "") for step in job["steps"])
    assert "idra canary" in commands and "--state-file" in commands
    assert "idra reap" in commands and "--fleet aws" in commands
    assert not any("aws-access-key-id" in str(step.get("with", {})) for step in job["steps"])
