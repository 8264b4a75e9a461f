"""``idra ops run``: the lifecycle service of one stack.

One supervised loop runs the canary, the rollout with scale-in, and the reaper, each on
its own interval (``idra:opsCanaryIntervalSeconds``, ``opsRolloutIntervalSeconds``,
``opsReaperIntervalSeconds``). It wakes every shortest interval (its *tick*) and then:

1. takes or renews the **lease** in the control plane (``PUT /v1/ops/lease/ops``, judged
   by the database's clock): two loops never act at once; a standby takes over once the
   holder's lease expired;
2. as holder, runs each pass that is due — a pass's error is logged and never ends the
   loop — and logs one progress line per pass;
3. puts the heartbeat and the alarm metrics (:mod:`idra.lifecycle.metrics`) to
   CloudWatch.

The passes are the existing one-shot functions (:func:`canary.run_once`,
:func:`rollout.rollout`, :func:`scale_in.scale_in`, :func:`reaper.reap`). The loop keeps
no state of its own: the canary's confirmations are in the control plane too
(:class:`Confirmations`), so a replaced instance carries on.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from idra.lifecycle import canary as canary_mod
from idra.lifecycle import metrics
from idra.lifecycle.api import OperatorApi
from idra.lifecycle.checks import NodeChecks, Probing
from idra.lifecycle.dnsbl import Verdict
from idra.lifecycle.fleet import Fleet
from idra.lifecycle.reaper import reap
from idra.lifecycle.rollout import AwsTemplates, rollout
from idra.lifecycle.scale_in import scale_in

log = logging.getLogger("idra.ops")
LEASE_NAME = "ops"


def default_holder() -> str:
    """Who holds the lease: the host (an EC2 hostname names its instance) and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """The control plane's lease ``name`` (``PUT /v1/ops/lease/{name}``): taken when
    nobody holds it, we hold it, or the holder's lease expired, judged by the
    database's clock in one statement. Renewed every tick."""

    def __init__(self, api: OperatorApi, holder: str, seconds: float,
                 name: str = LEASE_NAME) -> None:  # fmt: skip
        self.api, self.holder, self.seconds, self.name = api, holder, seconds, name

    def acquire(self) -> bool:
        """Take or renew the lease; False while another holder's lease runs."""
        return self.api.ops_lease(self.name, self.holder, self.seconds)

    def release(self) -> None:
        """Give the lease up at once (a clean stop), if we still hold it."""
        self.api.ops_release(self.name, self.holder)


@dataclass
class Confirmations:
    """The canary's consecutive-listing counts, kept in the control plane
    (``/v1/ops/canary``): a replaced loop carries on where the last one stopped."""

    api: OperatorApi

    def load(self) -> dict[str, int]:
        return self.api.canary_confirmations()

    def save(self, listed_runs: dict[str, int]) -> None:
        self.api.save_canary_confirmations(listed_runs)


@dataclass
class Pass:
    name: str
    every: float
    run: Callable[[], str]  # does the work, returns its one-line summary
    due: float = 0.0


@dataclass
class Ops:
    """The loop's parts; :func:`passes` builds the real ones for a stack."""

    stack: str
    lease: Lease
    cloudwatch: Any  # None: no metrics (no AWS, the lab)
    passes: list[Pass]
    tick: float
    values: dict[str, float] = field(default_factory=dict)  # the last alarm metrics

    def run(self, stop: threading.Event, ticks: int | None = None) -> None:
        """Until ``stop`` is set (or after ``ticks`` ticks)."""
        done = 0
        holding = False
        try:
            while not stop.is_set():
                holding = self.tick_once(holding)
                done += 1
                if ticks is not None and done >= ticks:
                    break
                stop.wait(self.tick)
        finally:
            if holding:
                try:
                    self.lease.release()
                except Exception as exc:  # it expires by itself
                    log.error("ops: lease not released: %s", _short(exc),
                              extra={"event": "ops.lease_error"})  # fmt: skip
                else:
                    log.info("ops: lease released", extra={"event": "ops.released"})

    def tick_once(self, held: bool) -> bool:
        try:
            holding = self.lease.acquire()
        except Exception as exc:  # control plane unreachable: nobody acts, the alarm says so
            log.error("ops: lease unavailable: %s", _short(exc), extra={"event": "ops.lease_error"})
            return False
        if holding != held:
            log.info("ops: %s the lease as %s", "took" if holding else "lost", self.lease.holder,
                     extra={"event": "ops.lease", "holding": holding})  # fmt: skip
        if not holding:
            log.info("ops: standby (another loop holds the lease)", extra={"event": "ops.standby"})
            return False
        now = time.monotonic()
        for job in self.passes:
            if now < job.due:
                continue
            if job is not self.passes[0] and not self._still_held():
                return False  # a pass outlasted the lease: another loop may act now
            job.due = now + job.every
            started = time.monotonic()
            try:
                summary = job.run()
            except Exception as exc:  # one pass's error never ends the loop
                log.error("ops %s pass failed: %s", job.name, _short(exc),
                          extra={"event": "ops.pass_failed", "pass": job.name})  # fmt: skip
                continue
            log.info("ops %s pass: %s (%.1fs)", job.name, summary, time.monotonic() - started,
                     extra={"event": "ops.pass", "pass": job.name})  # fmt: skip
        if self.cloudwatch is None:  # the lab: the progress lines are the record
            return True
        try:
            metrics.put(self.cloudwatch, self.stack, {metrics.HEARTBEAT: 1, **self.values})
        except Exception as exc:
            log.error("ops: metrics not put: %s", _short(exc), extra={"event": "ops.metrics_error"})
        return True

    def _still_held(self) -> bool:
        """Renew the lease before each further pass of a tick."""
        try:
            if self.lease.acquire():
                return True
        except Exception as exc:
            log.error("ops: lease unavailable: %s", _short(exc), extra={"event": "ops.lease_error"})
        log.warning("ops: lost the lease during a tick", extra={"event": "ops.lease_lost"})
        return False


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def passes(
    *,
    api: OperatorApi,
    templates: AwsTemplates | None,
    fleet: Fleet,
    regions: list[str],
    intervals: dict[str, float],
    max_drain: dt.timedelta,
    confirmations: Confirmations,
    zones: tuple[str, ...],
    resolver: Any,
    values: dict[str, float],
    probing: Probing | None = None,
) -> list[Pass]:
    """The passes of a stack; each updates its alarm metrics in ``values``. Without
    ``templates`` (the lab: no launch templates) there is no rollout pass; with
    ``probing`` the canary also probes through its tunnel to each node."""
    values.update(dict.fromkeys(metrics.PASS_METRICS, 0.0))
    checks = NodeChecks(api, zones, resolver, probing)
    peers: set[str] = set()  # nodes with the canary's peer (set by this loop)

    def canary() -> str:
        nodes = [n for n in api.nodes("active") if n.get("region") in regions]
        checks.begin(nodes, peers)
        reports, state = canary_mod.run_once(
            nodes, checks, lambda node_id: api.drain(node_id, "blocked"), confirmations.load()
        )
        confirmations.save(state)
        peers.clear()
        peers.update(checks.peers)
        listed = [r for r in reports if r.verdict is Verdict.LISTED]
        values[metrics.CANARY_LISTED] = len(listed)
        by = Counter(c.name for r in listed for c in r.checks if c.verdict is Verdict.LISTED)
        errors = sum(r.verdict is Verdict.ERROR for r in reports)
        drained = sum(r.drained for r in reports)
        return (f"{len(reports)} active, {len(listed)} listed"
                + (f" ({', '.join(f'{k} {v}' for k, v in sorted(by.items()))})" if by else "")
                + f", {errors} errors, {drained} drained")  # fmt: skip

    def rollout_and_scale_in() -> str:
        steps = rollout(api, templates, regions=regions)
        steps += scale_in(api, templates, regions=regions)
        acted = [s for s in steps if s.action in ("drain", "surge", "stop")]
        return ", ".join(f"{s.action} {s.node_id} in {s.region}" for s in acted) or "no change"

    def reaper() -> str:
        now = dt.datetime.now(dt.UTC)
        draining = [n for n in api.nodes("draining") if n.get("region") in regions]
        decisions = reap(api, fleet, max_drain, regions=regions, now=now)
        values[metrics.DRAINS_OVERDUE] = sum(_overdue(n, now, max_drain) for n in draining)
        values[metrics.IDENTITY_REFUSALS] = sum(d.action == "refused" for d in decisions) + sum(
            n.get("drain_reason") == "identity_lost" for n in draining
        )
        ended = sum(d.action == "terminate" and not d.failed for d in decisions)
        failed = sum(d.failed for d in decisions)
        return f"{len(decisions)} draining, {ended} terminating, {failed} failed or refused"

    jobs = [Pass("canary", intervals["canary"], canary)]
    if templates is not None:
        jobs.append(Pass("rollout", intervals["rollout"], rollout_and_scale_in))
    return [*jobs, Pass("reaper", intervals["reaper"], reaper)]


def _overdue(node: dict[str, Any], now: dt.datetime, max_drain: dt.timedelta) -> bool:
    started = node.get("drain_started_at")
    if not started:
        return False
    if isinstance(started, int | float):
        since = dt.datetime.fromtimestamp(started, dt.UTC)
    else:
        since = dt.datetime.fromisoformat(str(started).replace("Z", "+00:00"))
        since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
    return now - since > max_drain
