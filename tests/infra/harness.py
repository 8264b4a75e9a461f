"""Run the Pulumi program under Pulumi's mock runtime and record what it registers.

Config comes from the real ``Pulumi.<stack>.yaml``, passed the way the Pulumi CLI passes
it (every value a string, lists as JSON); the stack secrets are test values kept so the
tests can look for them where they must never appear.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import secrets

import pulumi
import yaml

from idra.config import stack_file
from infra.program import main
from tests.infra.mocks import (
    ACCOUNTS,
    IMAGES,
    Deployment,
    Image,
    RecordingMocks,
    RecordingMonitor,
    Resource,
)

__all__ = ["ACCOUNTS", "IMAGES", "Deployment", "Image", "Resource", "deploy", "stack_config"]

SECRET_KEYS = ("idra:nodeToken", "idra:firebasePrivateKey", "idra:blindedSigningPrivateKey")
REQUIRED_SECRETS = SECRET_KEYS[1:]


def stack_config(stack: str) -> dict[str, str]:
    """The stack file's config as the Pulumi CLI hands it to the program."""
    document = yaml.safe_load(stack_file(stack).read_text())["config"]
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in document.items()}


def deploy(
    stack: str, config: dict[str, str] | None = None, images: tuple[Image, ...] = IMAGES
) -> Deployment:
    """Run ``infra.program.main`` for ``stack``; ``config`` defaults to the real stack file
    plus freshly generated values for the stack secrets."""
    deployment = Deployment(stack)
    if config is None:
        config = stack_config(stack)
        for key in REQUIRED_SECRETS:
            config[key] = f"-----BEGIN PRIVATE KEY-----{secrets.token_hex(24)}"
            deployment.secret_values.append(config[key])
    # Pulumi's mock runtime runs on the thread's current event loop, and an asyncio.run()
    # in an earlier test leaves none set: give each deployment its own.
    asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = RecordingMocks(deployment, images)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="idra", stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(config, [key for key in config if key in SECRET_KEYS])

    @pulumi.runtime.test
    def program() -> pulumi.Output:
        return pulumi.Output.from_input(main()).apply(deployment.outputs.update)

    try:
        program()
    except Exception:
        _forget_failed_futures()
        raise
    return deployment


def _forget_failed_futures() -> None:
    """A failed deployment leaves hundreds of futures holding its error; asyncio would log
    each one when Python exits and bury pytest's summary under them. Reset Pulumi's
    runtime and collect them now, with asyncio's "never retrieved" log off."""
    pulumi.runtime.settings.reset_options()
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.disabled = True
    try:
        gc.collect()
    finally:
        asyncio_log.disabled = False
