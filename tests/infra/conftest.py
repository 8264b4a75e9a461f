from __future__ import annotations

import pytest

from tests.infra.harness import Deployment, deploy

STACKS = ("staging", "production")


@pytest.fixture(scope="session")
def deployments() -> dict[str, Deployment]:
    """Both real stacks, each run once under the mock runtime."""
    return {stack: deploy(stack) for stack in STACKS}


@pytest.fixture(params=STACKS)
def deployment(request: pytest.FixtureRequest, deployments: dict[str, Deployment]) -> Deployment:
    return deployments[request.param]
