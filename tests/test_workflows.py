"""GitHub workflows validate against the workflow schema and do what operators rely on."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from idra.config import REPO_ROOT
from idra.netns import run
from tests.controlplane.conftest import start

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
WORKFLOW = WORKFLOWS / "lifecycle.yml"
PULUMI_ACTION = REPO_ROOT / ".github" / "actions" / "pulumi" / "action.yml"
# The running interpreter's environment (a venv, a CI image, a distro's python), never
# a path of this checkout.
CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")


def test_every_workflow_is_schema_valid() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) >= 2
    result = run(
        [
            CHECK_JSONSCHEMA,
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
            CHECK_JSONSCHEMA,
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
    assert workflow["permissions"] == {"contents": "read"}
    job = workflow["jobs"]["preview"]
    assert job["permissions"]["id-token"] == "write"
    assert job["permissions"]["pull-requests"] == "write"
    stacks = {entry["stack"] for entry in job["strategy"]["matrix"]["include"]}
    assert stacks == {"staging", "production"}
    (step,) = _pulumi_steps(job)
    assert step["with"]["command"] == "preview"
    assert step["with"]["stack"] == "${{ matrix.stack }}"
    assert step["with"]["pulumi-access-token"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert step["with"]["role-to-assume"].startswith("${{ vars[")


def _jobs_with_secrets(workflow: dict) -> dict[str, dict]:
    return {name: job for name, job in workflow["jobs"].items() if "secrets." in str(job)}


def test_pull_request_code_never_holds_production_credentials() -> None:
    """Every job that pull-request code runs in and that reads a secret runs in an
    environment of its own stack: `preview-production` (required reviewers) holds the
    production preview token; nothing is read from repository-level secrets."""
    for path in sorted(WORKFLOWS.glob("*.yml")):
        workflow = _load(path)
        if "pull_request" not in workflow[True] and "pull_request_target" not in workflow[True]:
            continue
        assert "pull_request_target" not in workflow[True], path.name
        assert "secrets." not in str(workflow.get("env", {})), path.name
        for name, job in _jobs_with_secrets(workflow).items():
            assert job.get("environment") == "preview-${{ matrix.stack }}", (path.name, name)
            stacks = [e["stack"] for e in job["strategy"]["matrix"]["include"]]
            assert stacks == ["staging", "production"]
    assert not _jobs_with_secrets(_load(WORKFLOWS / "ci.yml"))


def test_main_deploys_staging_then_production_behind_approval() -> None:
    """Production starts only after staging's rollout job finished (every staging node on
    the new version and serving): a job dependency, not a timer."""
    workflow = _load(WORKFLOWS / "infra-deploy.yml")
    assert workflow[True]["push"]["branches"] == ["main"]
    assert "concurrency" not in workflow, "per stack, not one group for both"
    jobs = workflow["jobs"]
    assert jobs["test"]["uses"] == "./.github/workflows/ci.yml"
    needs = {name: job.get("needs") for name, job in jobs.items()}
    assert needs == {"test": None, "staging": "test", "staging-rollout": "staging",
                     "production": "staging-rollout", "pin-production": "staging-rollout",
                     "production-rollout": "production"}  # fmt: skip
    for name, job in jobs.items():
        if name != "test":
            assert job["if"] == "github.ref == 'refs/heads/main'", name  # workflow_dispatch too
    for stack in ("staging", "production"):
        job = jobs[stack]
        assert job["environment"] == stack
        assert job["concurrency"] == {"group": f"pulumi-{stack}", "cancel-in-progress": False}
        assert job["permissions"]["id-token"] == "write"
        (step,) = _pulumi_steps(job)
        assert (step["with"]["command"], step["with"]["stack"]) == ("up", stack)
        assert step["with"]["role-to-assume"] == f"${{{{ vars.{stack.upper()}_DEPLOY_ROLE_ARN }}}}"
        assert step["with"]["pulumi-access-token"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
        rollout = jobs[f"{stack}-rollout"]
        assert rollout["environment"] == f"{stack}-lifecycle"
        (run,) = [s for s in rollout["steps"] if "idra rollout" in s.get("run", "")]
        assert f"--stack {stack} --wait " in run["run"]
        assert "<(printf '%s' \"$OPERATOR_TOKEN\")" in run["run"], "never on disk"
        assert run["env"] == {"OPERATOR_TOKEN": "${{ secrets.OPERATOR_TOKEN }}"}
    pin = jobs["pin-production"]
    assert "secrets." not in str(pin) and "environment" not in pin
    command = " ".join(s.get("run", "") for s in pin["steps"])
    assert "idra release pin --stack production --from-stack staging" in command
    assert "gh pr create" in command


def test_test_job_lints_and_runs_the_suite() -> None:
    ci = _load(WORKFLOWS / "ci.yml")
    assert "workflow_call" in ci[True]
    run_steps = " ".join(step.get("run", "") for step in ci["jobs"]["test"]["steps"])
    assert "scripts/test" in run_steps
    script = (REPO_ROOT / "scripts" / "test").read_text()
    assert "ruff check" in script and "ruff format --check" in script and "pytest" in script


def test_pulumi_cli_version_is_pinned() -> None:
    steps = _load(PULUMI_ACTION)["runs"]["steps"]
    (pulumi,) = [step for step in steps if step.get("uses", "").startswith("pulumi/actions@")]
    version = str(pulumi["with"]["pulumi-version"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert version == importlib.metadata.version("pulumi"), "the CLI release of the tested SDK"


def test_release_builds_pins_staging_and_opens_a_pull_request() -> None:
    """The tag's build is the one attached and the one pinned; staging only."""
    release = _load(WORKFLOWS / "release.yml")
    assert release[True]["push"]["tags"] == ["v*"]
    assert release["permissions"] == {"contents": "read"}
    job = release["jobs"]["agent"]
    assert job["permissions"] == {"contents": "write", "pull-requests": "write"}
    runs = [step.get("run", "") for step in job["steps"]]
    joined = "\n".join(runs)
    pin = next(i for i, r in enumerate(runs) if "idra release pin" in r)
    attach = next(i for i, r in enumerate(runs) if "gh release create" in r)
    pull = next(i for i, r in enumerate(runs) if "gh pr create" in r)
    assert pin < attach < pull
    assert '--stack staging --version "$GITHUB_REF_NAME" --out dist' in runs[pin]
    assert "dist/node-daemon.pyz dist/node-daemon.pyz.sha256" in runs[attach]
    assert "-- Pulumi.staging.yaml" in runs[pull] and "--stack production" not in joined
    shiv = re.search(r'SHIV_VERSION = "(.+?)"', (REPO_ROOT / "agent/build.py").read_text())
    assert f'"shiv=={shiv.group(1)}"' in joined, "the shiv release of agent/build.py"
    assert "${{" not in joined.replace("${{ github.token }}", ""), "no expression in a script"


def test_lifecycle_is_a_manual_break_glass_with_oidc_for_both_stacks() -> None:
    """The service in the account runs the lifecycle (idra ops run); GitHub only by hand."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert list(workflow[True]) == ["workflow_dispatch"]  # YAML 1.1 reads "on" as True
    schedules = [p.name for p in WORKFLOWS.glob("*.yml") if "schedule" in _load(p)[True]]
    assert not schedules, f"no scheduled workflow: {schedules}"
    job = workflow["jobs"]["canary-and-reaper"]
    assert job["permissions"]["id-token"] == "write"
    stacks = {entry["stack"] for entry in job["strategy"]["matrix"]["include"]}
    assert stacks == {"staging", "production"}
    commands = " ".join(step.get("run", "") for step in job["steps"])
    assert "idra canary" in commands
    assert "--state-file" not in commands, "the canary's confirmations are the control plane's"
    assert "idra reap" in commands and "--fleet aws" in commands
    assert "idra rollout" in commands and "idra scale-in" in commands
    assert not any("aws-access-key-id" in str(step.get("with", {})) for step in job["steps"])


def test_operator_token_only_in_the_steps_that_call_the_control_plane() -> None:
    job = _load(WORKFLOW)["jobs"]["canary-and-reaper"]
    assert job["environment"] == "${{ matrix.stack }}-lifecycle"
    assert job["if"] == "github.ref == 'refs/heads/main'"
    assert "secrets." not in str(job.get("env", {}))
    for step in job["steps"]:
        holds = "secrets." in str(step)
        calls = re.search(r"^\s*idra (canary|rollout|scale-in|reap) ", step.get("run", ""), re.M)
        assert holds == bool(calls), step.get("name")
        if holds:
            assert step["env"]["OPERATOR_TOKEN"] == "${{ secrets.OPERATOR_TOKEN }}"
            assert set(step["env"]) <= {"OPERATOR_TOKEN", "CANARY_WG_KEY"}
            assert "<(printf '%s' \"$OPERATOR_TOKEN\")" in step["run"], "never on disk"


def test_the_canary_runs_as_root_with_its_key_and_probes_through_the_nodes() -> None:
    """Root through sudo (namespaces, kernel WireGuard); its key from the environment's
    secret in an owner-only file removed after the step; the probes file in the repo."""
    job = _load(WORKFLOW)["jobs"]["canary-and-reaper"]
    (step,) = [s for s in job["steps"] if s.get("name") == "Canary"]
    assert step["shell"].startswith("sudo --preserve-env=") and step["shell"].endswith("{0}")
    assert step["env"]["CANARY_WG_KEY"] == "${{ secrets.CANARY_WG_KEY }}"
    command = step["run"]
    assert "umask 077" in command and 'trap \'rm -rf "$RUNNER_TEMP/canary-key"' in command
    assert '--key-file "$RUNNER_TEMP/canary-key/canary.key"' in command
    probes = re.search(r"--probes (\S+)", command).group(1)
    from idra.lifecycle.probes import load_probes

    assert load_probes(REPO_ROOT / probes) == []
    install = " ".join(s.get("run", "") for s in job["steps"])
    assert "wireguard-tools" in install and "/usr/local/bin/idra" in install


def test_reaper_reads_the_stacks_max_drain() -> None:
    commands = " ".join(
        step.get("run", "") for step in _load(WORKFLOW)["jobs"]["canary-and-reaper"]["steps"]
    )
    assert "--max-drain" not in commands
    assert "idra reap" in commands and "--stack ${{ matrix.stack }}" in commands


@pytest.mark.parametrize("name", ["Rollout", "Scale-in", "Reaper"])
def test_lifecycle_steps_run_as_written(name: str, tmp_path: Path) -> None:
    """The step's own command, through bash as Actions runs it, against a control plane."""
    server = start(tmp_path)
    try:
        (step,) = [s for s in _load(WORKFLOW)["jobs"]["canary-and-reaper"]["steps"]
                   if s.get("name") == name]  # fmt: skip
        command = step["run"].replace("${{ matrix.stack }}", "staging")
        env = dict(os.environ, IDRA_API_URL=server.url, OPERATOR_TOKEN=server.tokens["operator"],
                   PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # fmt: skip
        result = subprocess.run(["bash", "-e", "-c", command], env=env, capture_output=True,
                                text=True, timeout=60, check=False)  # fmt: skip
    finally:
        server.process.terminate()
        server.process.wait(10)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert server.tokens["operator"] not in result.stdout + result.stderr
