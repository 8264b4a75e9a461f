"""The reaper: terminate draining nodes once their users have left (ARCHITECTURE §5).

``blocked`` and ``manual`` wait until the last heartbeat reports no active peers, or the
maximum drain time has passed; ``compromised`` and ``identity_lost`` (its instance
re-registered without its credential) go at once. Only nodes the control
plane lists as draining are ever touched, and before any termination the fleet confirms
the instance is the stack's own (its auto-scaling group and tags): anything else is
``refused``, reported, and its record kept for the operator. A record is deleted only
once AWS shows its instance terminated; until then every pass resumes the termination
(completing the hook when the instance reaches ``Terminating:Wait``). Safe to run every
minute: a node whose instance is gone is just forgotten.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from idra.lifecycle.api import OperatorApi
from idra.lifecycle.fleet import Fleet, is_gone

AT_ONCE = ("compromised", "identity_lost")  # drain reasons reaped without waiting


@dataclass
class Decision:
    node_id: str
    reason: str
    action: str  # "terminate", "wait" or "refused" (not the stack's own instance)
    why: str
    outcome: str = ""

    @property
    def failed(self) -> bool:
        """The termination failed, or was refused (not the stack's own instance)."""
        return self.outcome.startswith("error") or self.action == "refused"

    def as_dict(self) -> dict[str, str]:
        return vars(self).copy()


def _time(value: Any) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def decide(node: dict[str, Any], now: dt.datetime, max_drain: dt.timedelta) -> Decision:
    reason = node.get("drain_reason") or "manual"
    peers = node.get("active_peers")
    if node.get("state") != "draining":
        return Decision(node["id"], reason, "wait", "not draining")
    if reason in AT_ONCE:
        return Decision(node["id"], reason, "terminate", f"{reason}: at once")
    if peers == 0:
        return Decision(node["id"], reason, "terminate", "no active peers")
    started = _time(node.get("drain_started_at"))
    if started and now - started >= max_drain:
        return Decision(node["id"], reason, "terminate", f"drain time over {max_drain}")
    return Decision(node["id"], reason, "wait", f"{peers} active peers")


def reap(
    api: OperatorApi,
    fleet: Fleet,
    max_drain: dt.timedelta,
    *,
    regions: Collection[str] = (),
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> list[Decision]:
    """One pass over the draining nodes (of ``regions``, or all); returns what was done.
    A node whose termination fails keeps its record (retried next pass); its decision's
    ``outcome`` says why."""
    now = now or dt.datetime.now(dt.UTC)
    decisions = []
    for node in api.nodes("draining"):
        if regions and node.get("region") not in regions:
            continue
        decision = decide(node, now, max_drain)
        if decision.action == "terminate":
            try:
                problem = fleet.check(node)
                if problem:
                    decision.action, decision.why = "refused", f"not terminated: {problem}"
                elif not dry_run:
                    decision.outcome = fleet.terminate(node)
                    if is_gone(decision.outcome):  # else: still leaving; the next pass
                        api.delete(node["id"], terminated=True)
            except Exception as exc:  # one node's AWS error never ends the pass
                detail = " ".join(str(exc).split())
                decision.outcome = f"error: {type(exc).__name__}: {detail}"
        decisions.append(decision)
    return decisions
