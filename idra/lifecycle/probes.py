"""HTTP probes made from a node's own address, through the canary's tunnel to that node.

The probes file (YAML) lists targets and how each one says "blocked":

    targets:
      - name: streaming
        url: https://www.example.com/geo
        blocked: {status: [403, 451], body: "(?i)proxy|not available"}
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import Annotated

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from idra.lifecycle.dnsbl import Check, Verdict


class BlockedRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: list[Annotated[int, Field(ge=100, le=599)]] = []
    body: str | None = None

    @field_validator("body")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        try:
            re.compile(pattern or "")
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return pattern


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    blocked: BlockedRule


class ProbesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    targets: list[Target] = []


def load_probes(path: Path) -> list[Target]:
    """Read a probes file; ValueError with one line naming the file on a bad one."""
    try:
        return ProbesFile.model_validate(yaml.safe_load(path.read_text()) or {}).targets
    except OSError as exc:
        raise ValueError(f"--probes {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError:
        raise ValueError(f"--probes {path}: not valid YAML") from None
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(map(str, error["loc"]))
        raise ValueError(f"{path}: {where}: {error['msg']}") from None


def probe(target: Target, source: str | None = None, timeout: float = 10.0) -> Check:
    """GET ``target.url`` (from local address ``source``) and apply the blocked rule."""
    transport = httpx.HTTPTransport(local_address=source, retries=1)
    try:
        with httpx.Client(transport=transport, timeout=timeout) as client:
            response = client.get(target.url)
    except httpx.HTTPError as exc:
        return Check(target.name, Verdict.ERROR, type(exc).__name__)
    rule = target.blocked
    if response.status_code in rule.status:
        return Check(target.name, Verdict.LISTED, f"HTTP {response.status_code}")
    if rule.body and re.search(rule.body, response.text):
        return Check(target.name, Verdict.LISTED, "blocked page")
    return Check(target.name, Verdict.CLEAN, f"HTTP {response.status_code}")


def egress(url: str, expected: str, timeout: float = 10.0) -> Check:
    """Ask a "what is my IP" service which address it sees: clean only when it is
    ``expected`` (the node's public address); anything else is an error, never a
    listing. The address seen is not reported (it may be the canary host's)."""
    try:
        with httpx.Client(transport=httpx.HTTPTransport(retries=1), timeout=timeout) as client:
            response = client.get(url)
        response.raise_for_status()
        seen = ipaddress.ip_address(response.text.strip()[:64])
    except httpx.HTTPError as exc:
        return Check("egress", Verdict.ERROR, type(exc).__name__)
    except ValueError:
        return Check("egress", Verdict.ERROR, "no address in the reply")
    if seen != ipaddress.ip_address(expected):
        return Check("egress", Verdict.ERROR, "seen as another address: not through the node")
    return Check("egress", Verdict.CLEAN, "seen as the node")


def through_node(targets: list[Target], whoami: str, expected: str) -> list[Check]:
    """The egress check, then (only if traffic leaves as the node) every probe."""
    seen = egress(whoami, expected)
    if seen.verdict is not Verdict.CLEAN:
        return [seen] + [Check(t.name, Verdict.ERROR, "egress not confirmed") for t in targets]
    return [seen] + [probe(target) for target in targets]


def main() -> int:
    """Run inside a probe namespace: a JSON request on stdin, the checks as JSON out."""
    request = json.load(sys.stdin)
    targets = [Target.model_validate(t) for t in request["targets"]]
    checks = through_node(targets, request["whoami"], request["expected"])
    json.dump([vars(c) | {"verdict": c.verdict.value} for c in checks], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
