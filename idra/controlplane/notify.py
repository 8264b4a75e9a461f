"""Change notification for long-polls (ARCHITECTURE §3b), behind one small interface.

A held ``GET /v1/nodes/{id}/peers?wait=S`` subscribes to its node, checks the store
once, then sleeps until a change for *that node* is published or its deadline passes.
A change wakes only the requests of the nodes it concerns (no thundering herd).

:class:`LocalNotifier` works within one process (SQLite's single writer). On
PostgreSQL every replica's store sends ``NOTIFY`` in its writing transaction and
:class:`idra.controlplane.fanout.PgNotifier` (a LocalNotifier fed by one ``LISTEN``
connection) wakes the requests held here; the API does not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable
from typing import Protocol


class Subscription(Protocol):
    async def wait(self, timeout: float) -> bool:
        """True when a change for the node was published since subscribing (or since
        the last wait that returned True); False at the timeout."""

    def close(self) -> None: ...


class ChangeNotifier(Protocol):
    def subscribe(self, node_id: str) -> Subscription:
        """Start listening for the node's changes (before checking the store: no change
        between the check and the wait is missed). Call from the event loop."""

    def publish(self, node_ids: Iterable[str]) -> None:
        """Changes for these nodes were committed (any thread)."""

    @property
    def held(self) -> int:
        """Requests waiting now (for metrics)."""

    def close(self) -> None:
        """Shutting down: every wait, now and later, ends at once (any thread)."""


class _Waiter:
    def __init__(self, owner: LocalNotifier, node_id: str) -> None:
        self.owner, self.node_id = owner, node_id
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        if self.owner.closed:
            return False
        try:
            await asyncio.wait_for(self.event.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        self.event.clear()
        return not self.owner.closed

    def close(self) -> None:
        self.owner._drop(self)


class LocalNotifier:
    """In-process: per node, the set of waiting requests; publish sets their events on
    their event loop (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[_Waiter]] = {}
        self.closed = False

    def subscribe(self, node_id: str) -> _Waiter:
        waiter = _Waiter(self, node_id)
        with self._lock:
            self._waiters.setdefault(node_id, set()).add(waiter)
        return waiter

    def _drop(self, waiter: _Waiter) -> None:
        with self._lock:
            waiting = self._waiters.get(waiter.node_id)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._waiters[waiter.node_id]

    def close(self) -> None:
        self.closed = True
        with self._lock:
            nodes = list(self._waiters)
        self.publish(nodes)

    def publish(self, node_ids: Iterable[str]) -> None:
        with self._lock:
            woken = [w for node in set(node_ids) for w in self._waiters.get(node, ())]
        for waiter in woken:
            with contextlib.suppress(RuntimeError):  # its loop closed (shutting down)
                waiter.loop.call_soon_threadsafe(waiter.event.set)

    @property
    def held(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiters.values())
