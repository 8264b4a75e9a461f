"""Sync v2 end to end (ARCHITECTURE §3b): the packaged agent and the real control plane.

- connect and revoke reach the interface within 2 s at the production heartbeat (10 s);
- a control plane killed in the middle of a paged full sync: every old peer stays, and
  the sync completes after the restart;
- compatibility: the new agent against a control plane that ignores ``wait``, ``limit``
  and ``cursor`` (v1), and a v1 agent (no wait, no paging) against the new one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.controlplane.conftest import start, wg_key

from .conftest import Env, Forwarder, eventually

SYNC_PARAMS = {"wait", "limit", "cursor"}


class Proxy(Forwarder):
    """Records each request's query, can strip sync v2 parameters (playing a v1 control
    plane), and calls ``on_cursor`` at the first page request after the first (then
    drops it unanswered)."""

    def __init__(self, upstream: str, strip: set[str] = frozenset(),
                 on_cursor: Callable[[], None] | None = None) -> None:  # fmt: skip
        super().__init__(upstream)
        self.strip, self.on_cursor = strip, on_cursor
        self.queries: list[dict[str, str]] = []

    def exchange(self, method, path, query, body, headers):
        self.queries.append(query)
        if "cursor" in query and self.on_cursor:
            hook, self.on_cursor = self.on_cursor, None
            hook()
            return None  # the page never arrives
        query = {k: v for k, v in query.items() if k not in self.strip}
        return super().exchange(method, path, query, body, headers)


def _add(env: Env, key: str) -> None:
    with env.cp.client("client") as client:
        assert client.post("/v1/peers", json={"public_key": key}).status_code == 200


def _remove(env: Env, key: str) -> None:
    with env.cp.client("client") as client:
        assert client.delete(f"/v1/peers/{key}").status_code == 204


def _until(condition: Callable[[], bool], limit: float = 3) -> float:
    """Seconds until ``condition`` holds (checked every 20 ms), at most ``limit``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit:
            return float("inf")
        time.sleep(0.02)
    return time.monotonic() - started


def test_connect_and_revoke_within_two_seconds_at_a_ten_second_heartbeat(
    env: Env, pyz: Path
) -> None:
    env.start_agent(pyz, "--heartbeat-interval", "10")
    started = time.monotonic()
    connects, revokes = [], []
    for _ in range(20):
        key = wg_key()
        _add(env, key)  # timed from the reply
        connects.append(_until(lambda k=key: k in env.dump()))
        _remove(env, key)
        revokes.append(_until(lambda k=key: k not in env.dump()))
    print(f"connect max {max(connects):.2f} s, revoke max {max(revokes):.2f} s")
    assert max(connects) < 2, connects
    assert max(revokes) < 2, revokes
    heartbeats = env.metric("idra_agent_heartbeats_total")
    assert heartbeats <= 2 + (time.monotonic() - started) / 9, "the heartbeat stays at 10 s"


def test_control_plane_killed_mid_page_keeps_every_old_peer(env: Env, pyz: Path) -> None:
    env.start_agent(pyz, "--page-size", "4")
    old = [wg_key() for _ in range(6)]
    for key in old:
        _add(env, key)
    eventually(lambda: set(old) <= set(env.dump()), what="the old peers")
    env.stop_agent()
    for key in old[:3]:  # revoked while the agent was away: their addresses go to others
        _remove(env, key)
    new = [wg_key() for _ in range(8)]
    for key in new:
        _add(env, key)

    port, tokens = int(env.cp.url.rsplit(":", 1)[1]), env.cp.tokens
    killed = threading.Event()

    def kill() -> None:
        env.cp.process.kill()
        env.cp.process.wait(10)
        killed.set()

    proxy = Proxy(env.cp.url, on_cursor=kill)
    try:
        env.start_agent(pyz, "--page-size", "4", "--api-url", proxy.url, wait=False)
        eventually(killed.is_set, what="the second page (and the kill)")
        eventually(  # the agent retries against a dead control plane
            lambda: env.metric("idra_agent_syncs_total", 'result="error"') >= 3,
            what="three failed retries",
        )
        kept = set(env.dump())
        assert set(old) <= kept, "a broken full sync removed an old peer"
        assert env.agent.poll() is None
        env.cp = start(env.tmp, port=port, tokens=tokens)
        eventually(lambda: set(env.dump()) == set(old[3:]) | set(new), timeout=30,
                   what="the full sync completed after the restart")  # fmt: skip
    finally:
        proxy.close()


def test_new_agent_against_a_control_plane_without_long_polls(env: Env, pyz: Path) -> None:
    proxy = Proxy(env.cp.url, strip=SYNC_PARAMS)  # a v1 control plane: one full list
    try:
        keys = [wg_key() for _ in range(5)]
        env.start_agent(pyz, "--page-size", "2", "--api-url", proxy.url)
        eventually(lambda: "does not hold long-polls" in env.log.read_text(), what="fallback")
        for key in keys:
            _add(env, key)
        _remove(env, keys[0])
        eventually(lambda: set(env.dump()) == set(keys[1:]), what="heartbeat-driven sync")
        assert env.agent.poll() is None
    finally:
        proxy.close()


def test_v1_agent_against_the_new_control_plane(env: Env, pyz: Path) -> None:
    proxy = Proxy(env.cp.url)
    try:
        keys = [wg_key() for _ in range(3)]
        env.start_agent(pyz, "--long-poll", "0", "--page-size", "0", "--api-url", proxy.url)
        for key in keys:
            _add(env, key)
        eventually(lambda: set(env.dump()) == set(keys), what="v1 sync on the heartbeat")
        _remove(env, keys[0])
        eventually(lambda: set(env.dump()) == set(keys[1:]), what="v1 sync on the heartbeat")
        assert proxy.queries and not any(SYNC_PARAMS & set(q) for q in proxy.queries)
    finally:
        proxy.close()
