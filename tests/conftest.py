"""Fixtures shared across test folders."""

from __future__ import annotations

import pytest

from tests.controlplane.conftest import start


@pytest.fixture
def cp(tmp_path):
    """The reference control plane as a real server (tests/controlplane has its own)."""
    server = start(tmp_path)
    yield server
    server.process.terminate()
    server.process.wait(10)


# The throwaway PostgreSQL cluster (tests/pg.py), for every test folder.
from tests.pg import postgres, postgres_cluster  # noqa: E402, F401
