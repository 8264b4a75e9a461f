"""Fixtures shared across test folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.controlplane.conftest import start


def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n N`` (scripts/test): each test file runs whole on one worker (its
    module-scoped servers start once), and all of tests/lab on the same one, since the
    machine holds one lab at a time (its namespace names are fixed)."""
    from xdist.scheduler import LoadFileScheduling

    class OneLabAtATime(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/lab" if nodeid.startswith("tests/lab/") else super()._split_scope(nodeid)

    return OneLabAtATime(config, log)


@pytest.fixture
def cp(tmp_path):
    """The reference control plane as a real server (tests/controlplane has its own)."""
    server = start(tmp_path)
    yield server
    server.process.terminate()
    server.process.wait(10)


@pytest.fixture(scope="session")
def pyz(tmp_path_factory) -> Path:
    """The agent built as node-daemon.pyz by agent/build.py (as CI and releases do), once
    per session for every folder."""
    out = tmp_path_factory.mktemp("dist")
    build = Path(__file__).resolve().parents[1] / "agent" / "build.py"
    subprocess.run([sys.executable, str(build), "--out", str(out)], check=True,
                   capture_output=True)  # fmt: skip
    return out / "node-daemon.pyz"


@pytest.fixture(scope="module")
def backend():
    """The store of the servers ``start`` starts outside tests/controlplane: SQLite
    (tests/controlplane/conftest.py overrides it: every module there runs on both)."""
    return "sqlite"


# The throwaway PostgreSQL cluster (tests/pg.py), for every test folder.
from tests.pg import postgres, postgres_cluster  # noqa: E402, F401
