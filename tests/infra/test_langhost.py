"""The program started exactly as ``pulumi preview`` / ``pulumi up`` start it: a fresh
interpreter, the working directory set to ``main`` from ``Pulumi.yaml``,
``runpy.run_path(".")`` (so ``infra/`` is first on ``sys.path``) and the stack config in
``PULUMI_CONFIG`` / ``PULUMI_CONFIG_SECRET_KEYS`` — see ``tests/infra/langhost.py``."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from idra.config import REPO_ROOT
from idra.netns import run as run_tool
from tests.infra.harness import REQUIRED_SECRETS, Deployment, stack_config

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"

HERE = Path(__file__).resolve().parent
PROJECT = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())


@dataclass
class Run:
    returncode: int
    stderr: str
    resources: list[dict]

    def names(self) -> list[tuple[str, str]]:
        return sorted((r["typ"], r["name"]) for r in self.resources)


def start_like_the_cli(
    stack: str,
    config: dict[str, str],
    secret_keys: list[str],
    tmp_path: Path,
    python: str = sys.executable,
    preview: bool = False,
) -> Run:
    """``python -u <exec> --project P --stack S --pwd <main> .`` with the CLI's environment."""
    host = tmp_path / "host"  # a neutral folder: the exec script's folder is sys.path[0]
    host.mkdir(exist_ok=True)
    for name in ("langhost.py", "mocks.py"):
        shutil.copy(HERE / name, host / name)
    out = tmp_path / f"{stack}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PULUMI_"))}
    env |= {
        "PULUMI_CONFIG": json.dumps(config),
        "PULUMI_CONFIG_SECRET_KEYS": json.dumps(secret_keys),
    }
    result = subprocess.run(
        [python, "-u", str(host / "langhost.py"), "--project", PROJECT["name"],
         "--stack", stack, "--pwd", str(REPO_ROOT / PROJECT["main"]), "--out", str(out),
         "--dry_run", "true" if preview else "false", "."],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    resources = json.loads(out.read_text())["resources"] if out.exists() else []
    return Run(result.returncode, result.stderr, resources)


def cli_config(stack: str) -> tuple[dict[str, str], list[str]]:
    """The stack file plus its two required secrets, marked secret as the CLI marks them."""
    config = stack_config(stack)
    for key in REQUIRED_SECRETS:
        config[key] = f"-----BEGIN PRIVATE KEY-----test-{key}"
    return config, list(REQUIRED_SECRETS)


@pytest.mark.parametrize(
    ("stack", "preview"), [("staging", True), ("production", True), ("production", False)]
)
def test_registers_the_full_resource_set(
    stack: str, preview: bool, tmp_path: Path, deployments: dict[str, Deployment]
) -> None:
    """`pulumi preview` (dry run) for both stacks, and `pulumi up` for production: a node
    group per region and the ops group (both stacks pin the ops artifact), whose user-data
    as registered passes the real ``cloud-init schema``."""
    run = start_like_the_cli(stack, *cli_config(stack), tmp_path, preview=preview)
    assert run.returncode == 0, run.stderr
    expected = sorted((r.typ, r.name) for r in deployments[stack].resources)
    assert run.names() == expected
    assert len(expected) > 25
    groups = sorted(r["name"] for r in run.resources if r["typ"] == "aws:autoscaling/group:Group")
    regions = yaml.safe_load(stack_config(stack)["idra:regions"])
    assert groups == sorted(["ops", *(f"{region}-nodes" for region in regions)])
    (ops,) = [r for r in run.resources if r["typ"] == LAUNCH_TEMPLATE and r["name"] == "ops"]
    path = tmp_path / "ops-user-data.yaml"
    path.write_bytes(gzip.decompress(base64.b64decode(ops["inputs"]["userData"])))
    assert path.read_text().startswith("#cloud-config\n")
    result = run_tool(["cloud-init", "schema", "--config-file", str(path)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_secret_fails_with_the_documented_line(tmp_path: Path) -> None:
    config, secret_keys = cli_config("staging")
    del config["idra:blindedSigningPrivateKey"]
    run = start_like_the_cli("staging", config, secret_keys, tmp_path)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "error: Pulumi.staging.yaml: idra:blindedSigningPrivateKey: required secret is not set; "
        "run 'pulumi config set --secret --stack staging idra:blindedSigningPrivateKey "
        "< BLINDED_SIGNING_PRIVATE_KEY.pem'"
    ]
    assert not run.resources


@pytest.mark.parametrize("key", ["idra:firebasePrivateKey", "idra:blindedSigningPrivateKey"])
def test_plaintext_private_key_is_refused(key: str, tmp_path: Path) -> None:
    config, secret_keys = cli_config("staging")
    secret_keys.remove(key)  # `pulumi config set` without --secret
    run = start_like_the_cli("staging", config, secret_keys, tmp_path)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"error: Pulumi.staging.yaml: {key}: must be encrypted; "
        f"run 'pulumi config set --secret --stack staging {key} ...'"
    ]
    assert config[key] not in run.stderr
    assert not run.resources


def test_no_module_of_the_program_shadows_the_standard_library() -> None:
    """``runpy.run_path(".")`` puts ``infra/`` (and the policy pack's folder) first on
    ``sys.path``: a file named like a standard module would replace it for every import."""
    names = set()
    for folder in (REPO_ROOT / PROJECT["main"], REPO_ROOT / "policy"):
        names |= {p.stem for p in folder.glob("*.py")}
        names |= {p.name for p in folder.iterdir() if (p / "__init__.py").exists()}
    assert "program" in names and "rules" in names
    assert names & sys.stdlib_module_names == set()


@pytest.mark.venv
def test_fresh_venv_from_requirements_alone_runs_the_program(tmp_path: Path) -> None:
    """What ``pulumi install`` does for ``toolchain: pip``, ``virtualenv: venv`` (pulumi/pulumi
    sdk/python/toolchain/pip.go): ``python -m venv <root>/<virtualenv>``, then
    ``python -m pip install -r requirements.txt`` with the program folder as working
    directory. Then the program runs from that venv only."""
    program = REPO_ROOT / PROJECT["main"]
    options = PROJECT["runtime"]["options"]
    assert (options["toolchain"], options["virtualenv"]) == ("pip", "venv")
    venv = tmp_path / "venv"  # <root>/venv in real use; here a fresh one under tmp
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_NO_CACHE"))}
    install = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "-r", "requirements.txt"],
        cwd=program, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    run = start_like_the_cli(
        "production", *cli_config("production"), tmp_path, str(venv / "bin/python")
    )
    assert run.returncode == 0, run.stderr
    assert len(run.resources) > 25
    # The policy pack (virtualenv ../venv) runs from the same venv.
    subprocess.run([str(venv / "bin/python"), "-c", "import pulumi_policy"], check=True)
