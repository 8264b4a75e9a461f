"""Build the release zipapps (shiv) and their ``.sha256`` files into ``dist/``:

    python agent/build.py [--out dist] [--artifact node-daemon|idra-ops]

- ``node-daemon.pyz`` (the default): the node agent, pinned pure-Python wheels
  (agent/requirements.lock) plus the node_daemon package, Python ≥ 3.11 on any platform;
- ``idra-ops.pyz``: the ``idra`` command for the ops instance (``idra ops run``): the idra
  package, its templates and node_daemon, plus the wheels of agent/ops-requirements.lock
  for the ops image's interpreter (Alpine: CPython 3.12, musl, x86_64), compiled ones
  included — whatever the builder's own platform.

No network at run time. Reproducible: the same commit gives the same sha256 on any
machine, from any folder or virtualenv — fixed timestamps, sorted entries, fixed file
modes, no console scripts (pip writes the builder's own interpreter path into their
shebangs), no installer records, and one shiv release (its version is in the archive's
environment.json). botocore keeps only the service models each artifact uses, which
keeps the files well under their 25 MB budget.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

AGENT = Path(__file__).resolve().parent
ROOT = AGENT.parent
EPOCH = "315532800"  # 1980-01-01, the earliest zip timestamp
SHIV_VERSION = "1.0.8"  # recorded inside the archive: another release, another sha256
# Per-install records that name the installer or the build folder, not the package.
INSTALL_RECORDS = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")


# pip's options for wheels of the ops image's python3 (Alpine 3.22: CPython 3.12 on musl,
# x86_64); pydantic-core ships musllinux_1_1 wheels, the others musllinux_1_2.
MUSL_CP312 = ("--platform", "musllinux_1_2_x86_64", "--platform", "musllinux_1_1_x86_64",
              "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312")  # fmt: skip


@dataclass(frozen=True)
class Artifact:
    """One zipapp: its wheels, our packages copied in (source -> folder in the archive),
    its entry point and the botocore service models it keeps."""

    name: str
    lock: Path
    packages: dict[Path, str]
    entry_point: str
    keep_services: frozenset[str]
    target: tuple[str, ...] = ()  # pip's --platform/--python-version/... for the wheels

    @property
    def file(self) -> str:
        return f"{self.name}.pyz"


NODE_DAEMON = Artifact(
    name="node-daemon",
    lock=AGENT / "requirements.lock",
    packages={AGENT / "node_daemon": "node_daemon"},
    entry_point="node_daemon.cli:main",
    keep_services=frozenset({"secretsmanager", "autoscaling", "sts"}),
)
IDRA_OPS = Artifact(
    name="idra-ops",
    lock=AGENT / "ops-requirements.lock",
    packages={
        ROOT / "idra": "idra",
        ROOT / "templates": "idra/templates",
        AGENT / "node_daemon": "node_daemon",
    },
    entry_point="idra.cli:main",
    keep_services=frozenset({"autoscaling", "cloudwatch", "ec2", "secretsmanager", "sts"}),
    target=MUSL_CP312,
)
ARTIFACTS = {a.name: a for a in (NODE_DAEMON, IDRA_OPS)}


class BuildError(RuntimeError):
    """The build cannot be reproducible here (one line saying why)."""


def _check_shiv() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("shiv")
    except PackageNotFoundError:
        found = None
    if found != SHIV_VERSION:
        raise BuildError(
            f"the build needs shiv=={SHIV_VERSION} (found {found or 'none'}): "
            f"pip install shiv=={SHIV_VERSION}"
        )


def _normalize(site: Path) -> None:
    """Drop what differs between builders; give every file and folder one mode."""
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts, unused by the agent
    for name in INSTALL_RECORDS:
        for record in site.glob(f"*.dist-info/{name}"):
            record.unlink()
    for path in site.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _trim_botocore(site: Path, keep: frozenset[str]) -> None:
    data = site / "botocore" / "data"
    for service in data.iterdir():
        if service.is_dir() and service.name not in keep:
            shutil.rmtree(service)


def build(out: Path, artifact: Artifact = NODE_DAEMON) -> Path:
    """Build ``artifact`` into ``out`` (with its ``.sha256``); return its path."""
    _check_shiv()
    out.mkdir(parents=True, exist_ok=True)
    target = out / artifact.file
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--no-compile",
                *artifact.target,
                "--target",
                str(site),
                "-r",
                str(artifact.lock),
            ],
            check=True,
        )
        for source, folder in artifact.packages.items():
            shutil.copytree(
                source,
                site / folder,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        _trim_botocore(site, artifact.keep_services)
        _normalize(site)
        env = {"SOURCE_DATE_EPOCH": EPOCH, "PATH": "/usr/bin:/bin"}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "shiv",
                "--site-packages",
                str(site),
                "--reproducible",
                "--compressed",
                "--python",
                "/usr/bin/env python3",
                "--entry-point",
                artifact.entry_point,
                "--output-file",
                str(target),
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    (out / f"{artifact.file}.sha256").write_text(f"{digest}  {artifact.file}\n")
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--artifact", choices=sorted(ARTIFACTS), default=NODE_DAEMON.name)
    args = parser.parse_args()
    try:
        path = build(args.out, ARTIFACTS[args.artifact])
    except BuildError as exc:
        sys.exit(f"build.py: {exc}")
    digest = (path.parent / f"{path.name}.sha256").read_text().split()[0]
    print(f"{path} {path.stat().st_size / 1e6:.1f} MB sha256 {digest}")
