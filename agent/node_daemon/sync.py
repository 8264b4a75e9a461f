"""Peer sync v2 (ARCHITECTURE §3b): one long-poll kept outstanding, full lists page by
page.

- :class:`Poller` runs in its own thread with its own HTTP connection and keeps one
  ``GET …/peers?since=V&wait=S`` outstanding, so a change reaches the interface as the
  control plane commits it; the agent's loop keeps heartbeating every interval. A
  control plane that does not hold requests (v1: it answers an empty delta at once) is
  detected and the agent syncs on the heartbeat as before.
- :func:`fetch` applies a full list page by page and removes a peer only once the whole
  list has arrived: a transfer broken mid-way leaves every old peer in place (a page's
  new peers stay: they were in the list). A peer whose address still belongs to a live
  peer not yet listed (an address handed on while we were away) waits for the end.

Bounds against a hostile control plane: a full list longer than ``--max-peers`` is
abandoned (a ``too_many_peers`` fault: the peers stay, the agent retries with backoff);
the peers waiting for the end of a list hold at most two pages of addresses, and the
interface never more than ``--max-peers`` peers. A peer left out by either bound is
added by another full sync, asked for at once.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from node_daemon.api import NodeApi, NotFound, Unauthorized
from node_daemon.bounded import Fault, sanitize
from node_daemon.peers import Plan, _key_of

if TYPE_CHECKING:
    from node_daemon.daemon import Agent
    from node_daemon.replies import Peers

log = logging.getLogger("node-daemon")
PAGE = 2000  # peers per page of a full list (≈ 200 KB of JSON)
LONG_POLL_S = 55.0  # below the control plane's cap (60 s)


def fetch(agent: Agent, api: NodeApi, wait: float | None = None) -> tuple[Plan, Peers]:
    """One sync: the delta since ``agent.version`` (a long-poll with ``wait``) or the
    full list, applied. Returns the (merged) plan and the first reply. A sync that left
    a peer out (a bound) leaves the version unknown: the next sync is a full one."""
    limit = agent.opts.page_size or None
    reply = api.peers(agent.node_id, agent.version, wait=wait, limit=limit)
    if reply.full and reply.next_cursor:
        result = _paged(agent, api, reply, limit)
    else:  # a delta, a one-page list, or a control plane that does not page
        with agent.peers_lock:
            result = agent.plan(reply.peers, reply.removed, full=reply.full)
            if reply.full:
                _refuse_if_all_rejected(len(reply.peers), result)
            agent._apply(result)
    agent.version = None if result.skipped else reply.version
    if result.skipped:
        log.warning("%d listed peers left for the next full sync (interface full or too "
                    "many waiting)", result.skipped)  # fmt: skip
    return result, reply


def _paged(agent: Agent, api: NodeApi, page: Peers, limit: int | None) -> Plan:
    """The live peers the list names are marked in the agent's table (no set of keys)."""
    total, deferred, listed, waiting = Plan(), [], 0, 0
    most, defer_max = api.max_peers, 2 * (limit or PAGE)  # addresses: a page of peers
    with agent.peers_lock:
        agent.live.unmark()
    while True:
        listed += len(page.peers)
        if listed > most:  # an endless list, or more than this node may hold
            raise Fault("control_plane", "too_many_peers", f"full list: over {most} peers")
        ready, later = _split(agent, page.peers)
        with agent.peers_lock:
            result = agent.plan(ready, [], full=False)
            agent._apply(result)
            agent.live.mark(key for peer in page.peers if (key := _key_of(peer)) is not None)
        _merge(total, result)
        for peer in later:
            if waiting + len(peer["allowed_ips"]) > defer_max:
                total.skipped += 1  # added by the next full sync
                continue
            waiting += len(peer["allowed_ips"])
            deferred.append(peer)
        if not page.next_cursor:
            break
        page = api.peers(agent.node_id, None, cursor=page.next_cursor, limit=limit)
    with agent.peers_lock:  # the list is complete: now (and only now) remove
        goes = agent.live.unmarked()
        result = agent.plan(deferred, goes, full=False)
        _refuse_if_all_rejected(listed, total, result)
        agent._apply(result)
    _merge(total, result)
    return total


def _refuse_if_all_rejected(listed: int, *results: Plan) -> None:
    """A full list of which every entry is rejected is a broken reply (a renamed field,
    a wrong pool), not an order to cut every user: refused, the peers stay."""
    if listed and sum(sum(result.rejected.values()) for result in results) >= listed:
        raise Fault("control_plane", "malformed", f"full list: all {listed} peers rejected")


def _split(agent: Agent, peers: list[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Peers to apply now, and those whose address a live peer not (yet) in the list
    holds: they wait until that peer is updated or removed at the end (kept as key and
    addresses only, so a waiting peer holds no more of the page than it needs)."""
    here = {_key_of(peer) for peer in peers}
    ready, later = [], []
    for peer in peers:
        key, hosts = _key_of(peer), _hosts(peer)
        holders = {agent.live.owners.get(ip) for ip in hosts or ()} - {None, key}
        if (
            key is not None
            and holders
            and not all(holder in here or agent.live.marked(holder) for holder in holders)
        ):
            later.append({"public_key": key, "allowed_ips": hosts})
        else:
            ready.append(peer)
    return ready, later


def _hosts(peer: Any) -> list[str] | None:
    """The peer's allowed IPs as the interface spells them; None if one is malformed
    (plan() rejects the peer and counts it)."""
    ips = peer.get("allowed_ips") if isinstance(peer, dict) else None
    hosts = []
    for text in ips if isinstance(ips, list) else []:
        try:
            hosts.append(str(ipaddress.ip_network(str(text), strict=True)))
        except ValueError:
            return None
    return hosts


def _merge(total: Plan, result: Plan) -> None:
    total.added += result.added
    total.updated += result.updated
    total.unchanged += result.unchanged
    total.removes += result.removes
    total.skipped += result.skipped
    total.rejected.update(result.rejected)


class Poller:
    """Keeps one long-poll outstanding (own thread, own connection)."""

    def __init__(self, agent: Agent, api: NodeApi, wait: float = LONG_POLL_S) -> None:
        self.agent, self.api, self.wait = agent, api, wait
        self.active = True  # False: the control plane does not hold requests (v1)
        self.failures = self.early = 0
        self._bytes_seen = (0, 0)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="long-poll", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        while self.active and not stop.is_set():
            stop.wait(self.round())

    def round(self) -> float:
        """One long-poll; returns how long to wait before the next (0: at once)."""
        agent = self.agent
        if agent.node_id is None or agent.unauthorized or not agent.api.credential:
            return 0.5  # the agent's loop registers (again)
        self.api.credential = agent.api.credential
        since, started = agent.version, time.monotonic()
        try:
            reply = agent.sync(wait=self.wait, api=self.api)
        except NotFound:
            agent.node_id = None  # the agent's loop registers again
            return 0.5
        except Unauthorized:
            return agent.interval  # the heartbeat sees it too and handles it
        except Fault as fault:
            return self._failed(fault)
        except Exception as exc:  # the thread outlives a bug, as the agent's loop does
            return self._failed(Fault("agent", "internal", type(exc).__name__))
        finally:
            self._count_bytes()
        self.failures = 0
        if agent.version is None:  # a bound left peers out: the next full list a bit later
            return agent.interval
        # A held request answers early only with changes. Early with nothing (or with a
        # full list again) twice in a row: the control plane ignores ``wait`` (v1).
        nothing = reply.full or not (reply.peers or reply.removed)
        if since is not None and nothing and time.monotonic() - started < self.wait / 2:
            self.early += 1
            if self.early >= 2:
                self.active = False
                log.info("the control plane does not hold long-polls: syncing on the heartbeat")
            return agent.interval
        self.early = 0
        return 0.0

    def _count_bytes(self) -> None:
        """This connection's bytes, as they happen (the loop counts its own)."""
        sent, received = self.api.bytes_sent, self.api.bytes_received
        self.agent.metrics.api_bytes.labels("sent").inc(sent - self._bytes_seen[0])
        self.agent.metrics.api_bytes.labels("received").inc(received - self._bytes_seen[1])
        self._bytes_seen = (sent, received)

    def _failed(self, fault: Fault) -> float:
        """Back off like the agent's loop; counted as a fault, logged once per outage
        (the heartbeat's own failures already count the sync errors)."""
        self.failures += 1
        self.agent.metrics.faults.labels(fault.dependency, fault.kind).inc()
        cap = min(self.agent.opts.backoff_max, self.agent.interval * 2 ** min(self.failures, 16))
        delay = random.uniform(0, cap)  # noqa: S311 - jitter (full-jitter backoff)
        if self.failures == 1:
            log.warning("long-poll: %s: peers kept, retrying with backoff", sanitize(fault))
        return delay
