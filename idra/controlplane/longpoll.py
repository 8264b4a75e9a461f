"""The long-poll of ``GET /v1/nodes/{id}/peers?since=V&wait=S`` (ARCHITECTURE §3b).

Subscribe to the node's changes first, then look in the store: changes after V (or a
full list) are answered at once; otherwise sleep until a change for this node is
published or S seconds pass, and answer with what the store holds then (an empty delta
at the deadline). Store reads run in the thread pool; the wait itself is a coroutine.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.concurrency import run_in_threadpool

from idra.controlplane.store import Store

MAX_WAIT_S = 60.0  # larger waits are capped
CURSOR = r"^[0-9]{1,16}\.[0-9]{1,16}$"  # "<version>.<last slot>" of the previous page


def _has_news(reply: dict[str, Any]) -> bool:
    return bool(reply["full"] or reply["peers"] or reply["removed"])


async def changes(
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
