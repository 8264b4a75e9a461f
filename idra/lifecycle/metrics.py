"""What the ops loop tells CloudWatch each pass, and the alarms built on it (infra/alarms.py).

Every metric is in the ``IDRA/Ops`` namespace (the only one the ops role may write) with
the dimension ``Stack``."""

from __future__ import annotations

from typing import Any

from idra.config import OPS_NAMESPACE

HEARTBEAT = "OpsHeartbeat"  # 1 per pass: its absence for two intervals is an alarm
DRAINS_OVERDUE = "DrainsOverdue"  # nodes draining longer than maxDrainSeconds
IDENTITY_REFUSALS = "IdentityRefusals"  # terminations refused + nodes whose identity was lost
CANARY_LISTED = "CanaryListed"  # nodes the canary found listed this pass
PASS_METRICS = (DRAINS_OVERDUE, IDENTITY_REFUSALS, CANARY_LISTED)


def put(client: Any, stack: str, values: dict[str, float]) -> None:
    """One PutMetricData call with ``values`` (metric name -> value) for ``stack``."""
    client.put_metric_data(
        Namespace=OPS_NAMESPACE,
        MetricData=[
            {
                "MetricName": name,
                "Dimensions": [{"Name": "Stack", "Value": stack}],
                "Value": float(value),
                "Unit": "Count",
            }
            for name, value in values.items()
        ],
    )
