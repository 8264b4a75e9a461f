"""Build ``dist/node-daemon.pyz`` (shiv) and ``dist/node-daemon.pyz.sha256``.

    python agent/build.py [--out dist]

Pinned pure-Python wheels (agent/requirements.lock) plus the node_daemon package, no
network at run time, Python ≥ 3.11. Reproducible: the same commit gives the same sha256
on any machine, from any folder or virtualenv — fixed timestamps, sorted entries, fixed
file modes, no console scripts (pip writes the builder's own interpreter path into their
shebangs), no installer records, and one shiv release (its version is in the archive's
environment.json). botocore keeps only the service models the agent uses, which keeps
the file well under its 25 MB budget.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

AGENT = Path(__file__).resolve().parent
KEEP_SERVICES = {"secretsmanager", "autoscaling", "sts"}
EPOCH = "315532800"  # 1980-01-01, the earliest zip timestamp
SHIV_VERSION = "1.0.8"  # recorded inside the archive: another release, another sha256
# Per-install records that name the installer or the build folder, not the package.
INSTALL_RECORDS = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")


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


def _trim_botocore(site: Path) -> None:
    data = site / "botocore" / "data"
    for service in data.iterdir():
        if service.is_dir() and service.name not in KEEP_SERVICES:
            shutil.rmtree(service)


def build(out: Path) -> Path:
    _check_shiv()
    out.mkdir(parents=True, exist_ok=True)
    target = out / "node-daemon.pyz"
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
                "--target",
                str(site),
                "-r",
                str(AGENT / "requirements.lock"),
            ],
            check=True,
        )
        shutil.copytree(
            AGENT / "node_daemon",
            site / "node_daemon",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        _trim_botocore(site)
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
                "node_daemon.cli:main",
                "--output-file",
                str(target),
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    (out / "node-daemon.pyz.sha256").write_text(f"{digest}  node-daemon.pyz\n")
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=AGENT.parent / "dist")
    try:
        path = build(parser.parse_args().out)
    except BuildError as exc:
        sys.exit(f"build.py: {exc}")
    digest = (path.parent / "node-daemon.pyz.sha256").read_text().split()[0]
    print(f"{path} {path.stat().st_size / 1e6:.1f} MB sha256 {digest}")
