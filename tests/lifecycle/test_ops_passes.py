"""The ops loop's passes against the real control plane and moto: the alarm metrics each
pass reports (what the CloudWatch alarms of infra/alarms.py read)."""

from __future__ import annotations

import datetime as dt

import boto3

from idra.lifecycle import metrics
from idra.lifecycle.api import OperatorApi
from idra.lifecycle.dnsbl import make_resolver
from idra.lifecycle.fleet import AwsFleet
from idra.lifecycle.ops import Confirmations, passes
from idra.lifecycle.rollout import AwsTemplates

from .conftest import GROUP, OTHER, REGION, STACK, instances


def test_reaper_pass_counts_refusals_and_overdue_drains(cp, aws) -> None:
    """A record pointing at another group's instance, drained past the maximum: the
    reaper refuses it (never terminated), and the pass reports one identity refusal and
    one overdue drain."""
    foreign = instances(aws, OTHER)[0]
    node = cp.register(foreign, region=REGION)
    cp.heartbeat(node, active_peers=2)
    with cp.client("operator") as operator:
        assert (
            operator.post("/node/drain", json={"id": node, "reason": "manual"}).status_code == 202
        )
    values: dict[str, float] = {}
    jobs = passes(
        api=OperatorApi(cp.url, cp.tokens["operator"]),
        templates=AwsTemplates(lambda s, r: boto3.client(s, region_name=r), {REGION: GROUP}),
        fleet=AwsFleet(lambda r: aws, STACK),
        regions=[REGION],
        intervals={"canary": 1, "rollout": 1, "reaper": 1},
        max_drain=dt.timedelta(0),
        confirmations=Confirmations(OperatorApi(cp.url, cp.tokens["operator"])),
        zones=("zen.spamhaus.org",),
        resolver=make_resolver(None),
        values=values,
    )
    assert values == dict.fromkeys(metrics.PASS_METRICS, 0.0)
    reaper = next(job for job in jobs if job.name == "reaper")
    assert reaper.run() == "1 draining, 0 terminating, 1 failed or refused"
    assert values[metrics.IDENTITY_REFUSALS] == 1
    assert values[metrics.DRAINS_OVERDUE] == 1
    assert foreign in instances(aws, OTHER), "never terminated"
