"""The long-poll of ``GET /v1/nodes/{id}/peers?since=V&wait=S`` (ARCHITECTURE §3b).

Subscribe to the node's changes first, then look in the store: changes after V (or a
full list) are answered at once; otherwise sleep until a change for this node is
published or S seconds pass, and answer with what the store holds then (an empty delta
at the deadline). Store reads run in the thread pool; the wait itself is a coroutine.

A node holds at most :data:`PER_NODE` long-polls at once and the process at most
``total`` (:class:`Holds`); one more is refused at once (:class:`TooMany`, a 429).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fastapi.concurrency import run_in_threadpool

from idra.controlplane.store import Store

MAX_WAIT_S = 60.0  # larger waits are capped
CURSOR = r"^[0-9]{1,16}\.[0-9]{1,16}$"  # "<version>.<last slot>" of the previous page
PER_NODE = 2  # the agent keeps one outstanding; a second covers a reconnect


class TooMany(Exception):
    """One more long-poll than the caps allow (answered 429)."""


class Holds:
    """Long-polls held now, per node and in total (used on the event loop only)."""

    def __init__(self, total: int, per_node: int = PER_NODE) -> None:
        self.total, self.per_node = total, per_node
        self.by_node: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, node_id: str) -> Iterator[None]:
        if self.by_node[node_id] >= self.per_node:
            raise TooMany(f"this node already holds {self.per_node} long-polls")
        if self.by_node.total() >= self.total:
            raise TooMany(f"{self.total} long-polls held: the control plane is full")
        self.by_node[node_id] += 1
        try:
            yield
        finally:
            self.by_node[node_id] -= 1
            if not self.by_node[node_id]:
                del self.by_node[node_id]


def _has_news(reply: dict[str, Any]) -> bool:
    return bool(reply["full"] or reply["peers"] or reply["removed"])


async def changes(
    store: Store, node_id: str, since: int, wait: float, limit: int | None, holds: Holds
) -> dict[str, Any]:
    with holds.hold(node_id):
        return await _changes(store, node_id, since, wait, limit)


async def _changes(
    store: Store, node_id: str, since: int, wait: float, limit: int | None
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    subscription = store.notifier.subscribe(node_id)
    try:
        while True:
            reply = await run_in_threadpool(store.peers_since, node_id, since, limit)
            if _has_news(reply):
                return reply
            left = deadline - loop.time()
            if left <= 0 or not await subscription.wait(left):
                return reply
    finally:
        subscription.close()
