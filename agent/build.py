"""Build ``dist/node-daemon.pyz`` (shiv) and ``dist/node-daemon.pyz.sha256``.

    python agent/build.py [--out dist]

Pinned pure-Python wheels (agent/requirements.lock) plus the node_daemon package, no
network at run time, Python ≥ 3.11. Reproducible: fixed timestamps and sorted entries,
so the same commit always gives the same sha256. botocore keeps only the service
models the agent uses, which keeps the file well under its 25 MB budget.
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


def _trim_botocore(site: Path) -> None:
    data = site / "botocore" / "data"
    for service in data.iterdir():
        if service.is_dir() and service.name not in KEEP_SERVICES:
            shutil.rmtree(service)


def build(out: Path) -> Path:
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
        for junk in site.glob("*.dist-info/RECORD"):
            junk.unlink()  # lists the temp path's files: differs per build
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
        )
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    (out / "node-daemon.pyz.sha256").write_text(f"{digest}  node-daemon.pyz\n")
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=AGENT.parent / "dist")
    path = build(parser.parse_args().out)
    digest = (path.parent / "node-daemon.pyz.sha256").read_text().split()[0]
    print(f"{path} {path.stat().st_size / 1e6:.1f} MB sha256 {digest}")
