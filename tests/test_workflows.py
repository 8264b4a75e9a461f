"""GitHub workflows validate against the workflow schema and do what operators rely on."""

from __future__ import annotations

from pathlib import Path

import yaml

from idra.config import REPO_ROOT
from idra.netns import run

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
WORKFLOW = WORKFLOWS / "lifecycle.yml"
PULUMI_ACTION = REPO_ROOT / ".github" / "actions" / "pulumi" / "action.yml"


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


def test_pulumi_action_is_schema_valid() -> None:
    result = run(
        [
            str(Path(REPO_ROOT, ".venv/bin/check-jsonschema")),
            "--builtin-schema",
            "vendor.github-actions",
            str(PULUMI_ACTION),
        ],
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _pulumi_steps(job: dict) -> list[dict]:
    return [step for step in job["steps"] if step.get("uses") == "./.github/actions/pulumi"]


def test_pulumi_action_installs_dependencies_then_runs_pulumi_with_oidc() -> None:
    steps = _load(PULUMI_ACTION)["runs"]["steps"]
    uses = [step.get("uses", "run") for step in steps]
    install = next(i for i, step in enumerate(steps) if "pip install" in step.get("run", ""))
    credentials = uses.index("aws-actions/configure-aws-credentials@v4")
    pulumi = uses.index("pulumi/actions@v6")
    assert install < pulumi and credentials < pulumi
    assert "requirements.txt" in steps[install]["run"]
    assert set(steps[credentials]["with"]) >= {"role-to-assume", "aws-region"}
    assert not any("aws-access-key-id" in str(step.get("with", {})) for step in steps)
    run_pulumi = steps[pulumi]
    assert run_pulumi["with"]["policyPacks"] == "policy"
    assert run_pulumi["with"]["comment-on-pr"] == "${{ inputs.command == 'preview' }}"
    assert run_pulumi["env"]["PULUMI_ACCESS_TOKEN"] == "${{ inputs.pulumi-access-token }}"


def test_every_pull_request_previews_both_stacks() -> None:
    workflow = _load(WORKFLOWS / "infra-preview.yml")
    assert "pull_request" in workflow[True]
    assert workflow["permissions"]["id-token"] == "write"
    assert workflow["permissions"]["pull-requests"] == "write"
    job = workflow["jobs"]["preview"]
    stacks = {entry["stack"] for entry in job["strategy"]["matrix"]["include"]}
    assert stacks == {"staging", "production"}
    (step,) = _pulumi_steps(job)
    assert step["with"]["command"] == "preview"
    assert step["with"]["stack"] == "${{ matrix.stack }}"
    assert step["with"]["pulumi-access-token"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert step["with"]["role-to-assume"].startswith("${{ vars[")


def test_main_deploys_staging_then_production_behind_approval() -> None:
    workflow = _load(WORKFLOWS / "infra-deploy.yml")
    assert workflow[True]["push"]["branches"] == ["main"]
    assert workflow["permissions"]["id-token"] == "write"
    assert workflow["concurrency"]["cancel-in-progress"] is False
    staging, production = workflow["jobs"]["staging"], workflow["jobs"]["production"]
    assert production["needs"] == "staging"
    assert production["environment"] == "production"
    for job, stack in ((staging, "staging"), (production, "production")):
        (step,) = _pulumi_steps(job)
        assert (step["with"]["command"], step["with"]["stack"]) == ("up", stack)
        assert step["with"]["role-to-assume"] == f"${{{{ vars.{stack.upper()}_DEPLOY_ROLE_ARN }}}}"
        assert step["with"]["pulumi-access-token"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"


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
