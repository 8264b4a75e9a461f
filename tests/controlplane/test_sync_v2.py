"""Sync v2 (ARCHITECTURE §3b) on the real control plane: long-poll, paged full lists,
the free-slot index; plus the in-process notifier and slot index on their own."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from idra.controlplane.notify import LocalNotifier
from idra.controlplane.slots import SlotIndex

from .conftest import ControlPlane, start, wg_key
from .test_api import _add


def _get(cp: ControlPlane, node_id: str, **params) -> httpx.Response:
    with cp.client(node_id) as node:
        node.timeout = httpx.Timeout(90)
        return node.get(f"/v1/nodes/{node_id}/peers", params=params)


def _node(cp: ControlPlane, region: str = "eu-central-1") -> str:
    node_id = cp.register(region=region)
    cp.heartbeat(node_id)
    return node_id


def _remove(cp: ControlPlane, key: str) -> None:
    with cp.client("client") as client:
        assert client.delete(f"/v1/peers/{key}").status_code == 204


def _later(delay: float, action) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), action()))
    thread.start()
    return thread


def test_long_poll_answers_at_once_when_there_are_changes(cp: ControlPlane) -> None:
    node_id = _node(cp)
    version = _get(cp, node_id).json()["version"]
    key = wg_key()
    _add(cp, key)
    started = time.monotonic()
    reply = _get(cp, node_id, since=version, wait=30).json()
    assert time.monotonic() - started < 2
    assert [p["public_key"] for p in reply["peers"]] == [key]


def test_long_poll_wakes_on_an_add_and_on_a_removal(cp: ControlPlane) -> None:
    node_id = _node(cp)
    version = _get(cp, node_id).json()["version"]
    key = wg_key()
    adder = _later(1.0, lambda: _add(cp, key))
    started = time.monotonic()
    reply = _get(cp, node_id, since=version, wait=30).json()
    waited = time.monotonic() - started
    adder.join()
    assert 0.9 < waited < 3, waited
    assert [p["public_key"] for p in reply["peers"]] == [key] and not reply["full"]

    remover = _later(1.0, lambda: _remove(cp, key))
    started = time.monotonic()
    reply = _get(cp, node_id, since=reply["version"], wait=30).json()
    remover.join()
    assert time.monotonic() - started < 3
    assert reply["removed"] == [key] and reply["peers"] == []


def test_long_poll_ends_with_an_empty_delta_at_its_deadline(cp: ControlPlane) -> None:
    node_id = _node(cp)
    version = _get(cp, node_id).json()["version"]
    started = time.monotonic()
    reply = _get(cp, node_id, since=version, wait=1.5).json()
    assert 1.4 < time.monotonic() - started < 4
    assert reply == {"version": version, "full": False, "peers": [], "removed": []}


def test_a_change_for_one_node_leaves_the_others_waiting(cp: ControlPlane) -> None:
    """No thundering herd through the API: node B's poll is not answered by A's change."""
    a, b = _node(cp, "eu-central-1"), _node(cp, "us-east-1")
    version = _get(cp, a).json()["version"]
    replies: dict[str, tuple[float, dict]] = {}

    def poll(node_id: str, wait: float) -> None:
        started = time.monotonic()
        body = _get(cp, node_id, since=version, wait=wait).json()
        replies[node_id] = (time.monotonic() - started, body)

    threads = [
        threading.Thread(target=poll, args=(a, 20)),
        threading.Thread(target=poll, args=(b, 3)),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    assert _add(cp, wg_key(), region="eu-central-1")["node_id"] == a
    for thread in threads:
        thread.join()
    assert replies[a][0] < 3 and len(replies[a][1]["peers"]) == 1
    assert replies[b][0] > 2.9 and replies[b][1]["peers"] == []


def test_held_long_polls_do_not_hold_up_heartbeats(cp: ControlPlane) -> None:
    """100 held polls (more than the server's thread pool; 2 for each of 50 nodes, the
    most a node may hold, from 4 addresses within the per-client cap) and heartbeats
    still answer."""
    nodes = [cp.register() for _ in range(50)]
    versions = {node: _get(cp, node).json()["version"] for node in nodes}

    async def scenario() -> list[float]:
        clients = [
            httpx.AsyncClient(base_url=cp.url, timeout=30, limits=httpx.Limits(max_connections=50),
                              transport=httpx.AsyncHTTPTransport(local_address=f"127.0.0.{n}"))
            for n in range(2, 6)
        ]  # fmt: skip
        held = [
            asyncio.create_task(clients[i % 4].get(
                f"/v1/nodes/{node}/peers", params={"since": versions[node], "wait": 4},
                headers={"Authorization": f"Bearer {cp.credentials[node]}"},
            ))
            for i, node in enumerate(nodes * 2)
        ]  # fmt: skip
        await asyncio.sleep(1.5)
        assert not any(task.done() for task in held)
        timings = []
        for _ in range(5):
            started = time.monotonic()
            await asyncio.to_thread(cp.heartbeat, nodes[0])
            timings.append(time.monotonic() - started)
        replies = await asyncio.gather(*held)
        for client in clients:
            await client.aclose()
        assert [r.status_code for r in replies] == [200] * 100
        return timings

    timings = asyncio.run(scenario())
    assert max(timings) < 1.0, timings


def test_full_list_in_pages(cp: ControlPlane) -> None:
    node_id = _node(cp)
    keys = {wg_key() for _ in range(25)}
    for key in keys:
        _add(cp, key)
    whole = _get(cp, node_id).json()  # an agent that does not page: one document
    assert whole["full"] and {p["public_key"] for p in whole["peers"]} == keys
    assert "next_cursor" not in whole

    pages, params = [], {"limit": 10}
    while True:
        page = _get(cp, node_id, **params).json()
        pages.append(page)
        if page["next_cursor"] is None:
            break
        params = {"cursor": page["next_cursor"], "limit": 10}
    assert [len(p["peers"]) for p in pages] == [10, 10, 5]
    assert {p["version"] for p in pages} == {whole["version"]}
    assert all(p["full"] for p in pages)
    listed = [p for page in pages for p in page["peers"]]
    assert sorted(listed, key=str) == sorted(whole["peers"], key=str)


def test_changes_during_paging_are_in_the_delta_after_the_first_page(cp: ControlPlane) -> None:
    node_id = _node(cp)
    keys = [wg_key() for _ in range(6)]
    for key in keys:
        _add(cp, key)
    first = _get(cp, node_id, limit=3).json()
    new = wg_key()
    _add(cp, new)
    _remove(cp, keys[-1])  # on the second page
    rest = _get(cp, node_id, cursor=first["next_cursor"], limit=3).json()
    seen = {p["public_key"] for p in first["peers"] + rest["peers"]}
    assert keys[-1] not in seen
    delta = _get(cp, node_id, since=first["version"]).json()
    assert not delta["full"]
    assert [p["public_key"] for p in delta["peers"]] == [new]
    assert delta["removed"] == [keys[-1]]


@pytest.mark.parametrize(
    "params",
    [
        {"wait": -1, "since": 0},
        {"wait": "soon", "since": 0},
        {"limit": 0},
        {"limit": 100_000},
        {"cursor": "7"},
        {"cursor": "1.2.3"},
        {"cursor": "-1.5"},
    ],
)
def test_bad_sync_parameters_are_400(cp: ControlPlane, params: dict) -> None:
    node_id = _node(cp)
    reply = _get(cp, node_id, **params)
    assert reply.status_code == 400, reply.text
    assert reply.json()["detail"].startswith("query.")


def test_pages_and_long_polls_are_only_for_the_node_itself(cp: ControlPlane) -> None:
    a, b = _node(cp), _node(cp)
    with cp.client(b) as other:
        for params in ({"since": 0, "wait": 5}, {"cursor": "1.0", "limit": 5}):
            started = time.monotonic()
            assert other.get(f"/v1/nodes/{a}/peers", params=params).status_code == 401
            assert time.monotonic() - started < 2, "refused before any wait"


def test_unknown_node_is_404_for_pages_too(cp: ControlPlane) -> None:
    node_id = _node(cp)
    with cp.client("operator") as ops:
        assert ops.delete(f"/v1/nodes/{node_id}", params={"terminated": "1"}).status_code == 204
    with cp.client(node_id) as gone:
        reply = gone.get(f"/v1/nodes/{node_id}/peers", params={"cursor": "1.0", "limit": 5})
    assert reply.status_code in (401, 404)


def test_free_slots_are_reused_lowest_first_also_after_a_restart(tmp_path) -> None:
    server = start(tmp_path)
    try:
        _node(server)
        keys = [wg_key() for _ in range(5)]
        addresses = [_add(server, key)["addresses"]["ipv4"] for key in keys]
        assert addresses == [f"10.96.0.{n}/32" for n in range(2, 7)]
        _remove(server, keys[1])
        _remove(server, keys[3])
    finally:
        server.process.terminate()
        server.process.wait(10)
    server = start(tmp_path, port=int(server.url.rsplit(":", 1)[1]), tokens=server.tokens)
    try:
        node_id = server.register(region="eu-central-1")
        server.heartbeat(node_id)
        got = [_add(server, wg_key())["addresses"]["ipv4"] for _ in range(3)]
        assert got == ["10.96.0.3/32", "10.96.0.5/32", "10.96.0.7/32"]
    finally:
        server.process.terminate()
        server.process.wait(10)


def test_slot_index() -> None:
    index = SlotIndex([2, 3, 5, 9], 2, 12)
    assert [index.take() for _ in range(5)] == [4, 6, 7, 8, 10]
    index.free(6)
    index.free(10)  # the newest: the high-water mark goes down
    assert index.take() == 6 and index.take() == 10
    assert [index.take(), index.take(), index.take()] == [11, 12, None]
    index.free(4)
    index.remove(4)  # undo of a free in a rolled-back transaction
    assert index.take() is None


def test_notifier_wakes_only_the_nodes_published() -> None:
    async def scenario() -> tuple[bool, bool, int]:
        notifier = LocalNotifier()
        a, b = notifier.subscribe("a"), notifier.subscribe("b")
        assert notifier.held == 2
        await asyncio.to_thread(notifier.publish, ["a"])  # from another thread
        woke_a, woke_b = await asyncio.gather(a.wait(1), b.wait(0.3))
        a.close()
        b.close()
        return woke_a, woke_b, notifier.held

    assert asyncio.run(scenario()) == (True, False, 0)


def test_shutdown_answers_held_long_polls_at_once(tmp_path) -> None:
    server = start(tmp_path)
    try:
        node_id = _node(server)
        version = _get(server, node_id).json()["version"]
        replies = []
        poll = threading.Thread(
            target=lambda: replies.append(_get(server, node_id, since=version, wait=50))
        )
        poll.start()
        time.sleep(1)
        started = time.monotonic()
        server.process.terminate()
        server.process.wait(10)
        poll.join(10)
        assert time.monotonic() - started < 5
        assert replies and replies[0].json()["peers"] == []
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_a_delta_longer_than_the_page_comes_as_a_paged_full_list(cp: ControlPlane) -> None:
    node_id = _node(cp)
    version = _get(cp, node_id).json()["version"]
    keys = {wg_key() for _ in range(5)}
    for key in keys:
        _add(cp, key)
    small = _get(cp, node_id, since=version, limit=5).json()
    assert not small["full"] and len(small["peers"]) == 5
    big = _get(cp, node_id, since=version, limit=3).json()
    assert big["full"] and len(big["peers"]) == 3 and big["next_cursor"]
    v1 = _get(cp, node_id, since=version).json()  # no limit: the delta, as before
    assert not v1["full"] and {p["public_key"] for p in v1["peers"]} == keys
