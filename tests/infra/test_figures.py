"""The figures docs/infrastructure.md quotes (user-data size, timeouts) are computed here
from the program's resources and the stack files; the doc's table must equal them."""

from __future__ import annotations

import base64
import gzip
import re

from idra.config import REPO_ROOT, load_stack
from idra.lifecycle.fleet import HOOK_WAIT_S
from idra.lifecycle.rollout import READY_WITHIN_S
from idra.render import USER_DATA_BUDGET
from tests.infra.harness import Deployment

DOC = REPO_ROOT / "docs" / "infrastructure.md"
LT = "aws:ec2/launchTemplate:LaunchTemplate"
ASG = "aws:autoscaling/group:Group"
EC2_LIMIT = 16 * 1024
PROVIDER_CAPACITY_WAIT_S = 600


def _at_most(size: int, step: int = 512) -> str:
    """A size rounded up to ``step``: a release pin (another sha256 and tag) moves the
    gzipped size by a few bytes and must not change the doc each time."""
    return f"≤ {-(-size // step) * step:,} bytes"


def _per_stack(values: dict[str, int], unit: str = "s") -> str:
    if len(set(values.values())) == 1:
        return f"{next(iter(values.values())):,} {unit}"
    return ", ".join(f"{stack} {value:,} {unit}" for stack, value in values.items())


def figures(deployments: dict[str, Deployment]) -> list[tuple[str, str]]:
    sent = {
        (stack, t.region): base64.b64decode(t.inputs["userData"])
        for stack, deployment in deployments.items()
        for t in deployment.of_type(LT)
    }
    (stack, region), blob = max(sent.items(), key=lambda item: len(item[1]))
    plain = max(len(gzip.decompress(b)) for b in sent.values())
    waits = {
        a.inputs["waitForCapacityTimeout"] for d in deployments.values() for a in d.of_type(ASG)
    }
    assert waits == {"0"}
    cfgs = {name: load_stack(name) for name in deployments}
    launch = {n: c.launch_hook_timeout_seconds for n, c in cfgs.items()}
    grace = {n: c.health_check_grace_seconds for n, c in cfgs.items()}
    assert max(launch.values()) + max(grace.values()) < READY_WITHIN_S, "hook + boot fit"
    return [
        ("user-data as sent, gzipped (largest: " + f"{stack} {region})",
         f"{_at_most(len(blob))}; budget {USER_DATA_BUDGET:,}, EC2's limit {EC2_LIMIT:,}"),
        ("user-data before gzip (largest)", _at_most(plain)),
        ("Pulumi's wait for capacity", f'none ("0"; the provider\'s default is '
                                       f"{PROVIDER_CAPACITY_WAIT_S} s)"),
        ("readiness hook timeout (`idra:launchHookTimeoutSeconds`)", _per_stack(launch)),
        ("health-check grace (`idra:healthCheckGraceSeconds`)", _per_stack(grace)),
        ("instance warmup (`idra:instanceWarmupSeconds`)",
         _per_stack({n: c.instance_warmup_seconds for n, c in cfgs.items()})),
        ("drain hook timeout (AWS's cap: 7,200 s)",
         _per_stack({n: c.termination_hook_timeout_seconds for n, c in cfgs.items()})),
        ("maximum drain (`idra:maxDrainSeconds`)",
         _per_stack({n: c.max_drain_seconds for n, c in cfgs.items()})),
        ("rollout: a launched node must be active within (`--ready-within`)",
         f"{READY_WITHIN_S:,} s"),
        ("reaper: longest wait for `Terminating:Wait` in one pass", f"{HOOK_WAIT_S:,.0f} s"),
    ]  # fmt: skip


def table(rows: list[tuple[str, str]]) -> str:
    lines = ["| figure | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
    return "\n".join(lines)


def test_the_docs_figures_are_the_computed_ones(deployments: dict[str, Deployment]) -> None:
    expected = table(figures(deployments))
    found = re.search(r"<!-- figures: [^>]+ -->\n(.*?)\n<!-- /figures -->", DOC.read_text(), re.S)
    assert found, "docs/infrastructure.md lost its figures block"
    assert found.group(1) == expected, f"put this table in the block:\n{expected}"
