"""IDRA security policy pack: ``pulumi preview --policy-pack policy``. Every rule is
mandatory; the rules themselves live in ``rules.py``."""

import sys
from pathlib import Path

from pulumi_policy import (
    EnforcementLevel,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rules import RULES, Rule


def _policy(name: str, description: str, rule: Rule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for problem in rule(args.resource_type, args.props):
            report_violation(problem, None)

    return ResourceValidationPolicy(name=name, description=description, validate=validate)


PolicyPack(
    name="idra-security",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[_policy(name, description, rule) for name, (description, rule) in RULES.items()],
)
