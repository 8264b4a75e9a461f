"""Stack settings from Pulumi config, validated by the same loader as ``idra render``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi

from idra.config import NAMESPACE, ConfigError, StackConfig, parse, stack_file

# Secrets Manager name of each environment secret -> the stack config key holding its value.
SECRETS = {
    "NODE_TOKEN": "nodeToken",
    "FIREBASE_PRIVATE_KEY": "firebasePrivateKey",
    "BLINDED_SIGNING_PRIVATE_KEY": "blindedSigningPrivateKey",
}
GENERATED = ("NODE_TOKEN",)  # generated with pulumi-random unless set as a stack secret


@dataclass(frozen=True)
class Settings:
    """Validated stack config plus the secret values (Pulumi secret outputs, never plain)."""

    cfg: StackConfig
    secrets: dict[str, pulumi.Output[str]]  # by Secrets Manager name; absent = generate


def _value(raw: str) -> Any:
    """Pulumi passes every config value as a string; lists and maps arrive as JSON."""
    return json.loads(raw) if raw[:1] in "[{" else raw


def load() -> Settings:
    """Read the ``idra:`` keys of the current stack; raise :class:`ConfigError` if wrong."""
    stack = pulumi.get_stack()
    source = stack_file(stack).name
    config = pulumi.Config(NAMESPACE)
    values: dict[str, Any] = {}
    for field in StackConfig.model_fields.values():
        alias = field.alias or ""
        raw = config.get(alias)
        if raw is not None:
            values[alias] = _value(raw)
    secrets: dict[str, pulumi.Output[str]] = {}
    for name, key in SECRETS.items():
        value = config.get_secret(key)
        if value is not None:
            if not pulumi.runtime.is_config_secret(f"{NAMESPACE}:{key}"):
                raise ConfigError(
                    f"{source}: {NAMESPACE}:{key}: must be encrypted; "
                    f"run 'pulumi config set --secret --stack {stack} {NAMESPACE}:{key} ...'"
                )
            secrets[name] = value
            values[key] = {"secure": "(set)"}
        elif name not in GENERATED:
            raise ConfigError(
                f"{source}: {NAMESPACE}:{key}: required secret is not set; run "
                f"'pulumi config set --secret --stack {stack} {NAMESPACE}:{key} < {name}.pem'"
            )
    return Settings(parse(values, stack=stack, source=source), secrets)


def tags(cfg: StackConfig, **extra: str) -> dict[str, str]:
    """Tags on every resource: which environment and what it is for."""
    return {"environment": cfg.stack, "role": "exit-node", "project": "idra", **extra}
