"""The scheduled lifecycle workflow is a valid GitHub workflow and runs both steps per stack."""

from __future__ import annotations

from pathlib import Path

import yaml

from idra.config import REPO_ROOT
from idra.netns import run

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "lifecycle.yml"


def test_schema_valid() -> None:
    result = run(
        [str(Path(REPO_ROOT, ".venv/bin/check-jsonschema")), "--builtin-schema",
         "vendor.github-workflows", str(WORKFLOW)],
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


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
