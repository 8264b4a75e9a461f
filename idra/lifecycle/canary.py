"""The canary: reputation checks of every active node; drain after two confirming runs.

A node is drained (reason ``blocked``) only when a blocklist or probe lists it on two
consecutive runs. A run with only errors for a node neither confirms nor clears it;
a clean run clears it. The count of confirming runs is kept in a small JSON state file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idra.lifecycle.dnsbl import Check, Verdict

CONFIRMATIONS = 2


@dataclass
class NodeReport:
    """What one run found for one node (addresses are the nodes', never clients')."""

    node_id: str
    public_ip: str
    checks: list[Check] = field(default_factory=list)
    confirmations: int = 0
    drained: bool = False
    drain_error: str = ""

    @property
    def verdict(self) -> Verdict:
        verdicts = {check.verdict for check in self.checks}
        if Verdict.LISTED in verdicts:
            return Verdict.LISTED
        return Verdict.ERROR if Verdict.ERROR in verdicts or not verdicts else Verdict.CLEAN

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "public_ip": self.public_ip,
            "verdict": self.verdict.value,
            "confirmations": self.confirmations,
            "drained": self.drained,
            "drain_error": self.drain_error,
            "checks": [vars(check) | {"verdict": check.verdict.value} for check in self.checks],
        }


def load_state(path: Path | None) -> dict[str, int]:
    """Confirmations so far: node id → consecutive listed runs."""
    return _read(path)[0]


def load_peers(path: Path | None) -> set[str]:
    """The nodes on which the canary has set its peer (removed once they leave)."""
    return _read(path)[1]


def _read(path: Path | None) -> tuple[dict[str, int], set[str]]:
    if path is None or not path.exists():
        return {}, set()
    try:
        data = json.loads(path.read_text())
        listed = {str(k): int(v) for k, v in data["listed_runs"].items()}
        peers = data.get("canary_peers", [])
        if not isinstance(peers, list):
            raise TypeError
        return listed, {str(p) for p in peers}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise ValueError(f"{path}: not a canary state file") from None


def save_state(path: Path | None, listed_runs: dict[str, int], peers: Iterable[str] = ()) -> None:
    """Write the state atomically (temp file + rename)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump({"listed_runs": listed_runs, "canary_peers": sorted(peers)}, handle)
    Path(tmp).replace(path)


def check_all(
    nodes: list[dict[str, Any]],
    checks: Callable[[dict[str, Any]], list[Check]],
    workers: int = 8,
    progress: Callable[[dict[str, Any], list[Check]], None] | None = None,
) -> dict[str, list[Check]]:
    """Run ``checks`` for every node, ``workers`` at a time; node id → its checks."""
    results: dict[str, list[Check]] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(nodes)))) as pool:
        futures = {pool.submit(checks, node): node for node in nodes}
        for future in as_completed(futures):
            node = futures[future]
            try:
                found = future.result()
            except Exception as exc:  # a check that crashed is an error, never a listing
                found = [Check("checks", Verdict.ERROR, type(exc).__name__)]
            results[node["id"]] = found
            if progress:
                progress(node, found)
    return results


def run_once(
    nodes: Iterable[dict[str, Any]],
    checks: Callable[[dict[str, Any]], list[Check]],
    drain: Callable[[str], None],
    state: dict[str, int],
    *,
    workers: int = 8,
    progress: Callable[[dict[str, Any], list[Check]], None] | None = None,
) -> tuple[list[NodeReport], dict[str, int]]:
    """Check the nodes (concurrently), update confirmations, drain confirmed ones; return
    the reports (in node order) and the new state. A failed drain is retried next run."""
    nodes = list(nodes)
    found = check_all(nodes, checks, workers, progress)
    reports, new_state = [], {}
    for node in nodes:
        report = NodeReport(node["id"], node["public_ip"], found[node["id"]])
        seen = state.get(report.node_id, 0)
        match report.verdict:
            case Verdict.LISTED:
                report.confirmations = seen + 1
            case Verdict.ERROR:
                report.confirmations = seen
            case Verdict.CLEAN:
                report.confirmations = 0
        if report.confirmations >= CONFIRMATIONS:
            try:
                drain(report.node_id)
                report.drained = True
            except Exception as exc:  # reported in the row, retried next run
                report.drain_error = " ".join(str(exc).split())
                new_state[report.node_id] = report.confirmations
        elif report.confirmations:
            new_state[report.node_id] = report.confirmations
        reports.append(report)
    return reports, new_state
