"""Two ``serve`` processes on one PostgreSQL database: concurrency is the database's.

No process-local lock can help here: each process has its own. Address slots, key
ownership, canary slots and versions must come out right from the constraints, row
locks and retries alone.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import ControlPlane, sql, start, wg_key

KINDS = ("node", "operator", "client", "metrics")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, backend):
    """Two servers (same tokens, same identity key) on one PostgreSQL database."""
    if backend != "postgresql":
        pytest.skip("two processes on one SQLite file is not a supported setup")
    tmp = tmp_path_factory.mktemp("pair")
    tokens = {kind: secrets.token_urlsafe(24) for kind in KINDS}
    servers = [start(tmp, tokens=tokens) for _ in range(2)]
    yield servers
    for server in servers:
        server.process.terminate()
        server.process.wait(10)


def _nodes(a: ControlPlane, b: ControlPlane, count: int) -> list[str]:
    """Registered through A, active and fresh (heartbeats through B)."""
    node_ids = [a.register(public_ip=f"203.0.113.{20 + i}") for i in range(count)]
    b.credentials.update(a.credentials)
    for node_id in node_ids:
        b.heartbeat(node_id)
    return node_ids


@pytest.mark.only_on("postgresql")
def test_1000_concurrent_peers_across_two_servers(pair) -> None:
    """1,000 POST /v1/peers split across both servers, 100 keys sent to both at once:
    no address is assigned twice, each key has one owner and one address."""
    a, b = pair
    _nodes(a, b, 3)
    keys = [wg_key() for _ in range(900)]
    jobs = [(keys[i], (a, b)[i % 2]) for i in range(900)]
    jobs += [(key, server) for key in keys[:50] for server in (a, b)]  # the same key twice
    clients = {id(s): s.client("client") for s in pair}
    replies: dict[str, set] = {}
    lock = threading.Lock()

    def post(job) -> int:
        key, server = job
        reply = clients[id(server)].post("/v1/peers", json={"public_key": key})
        if reply.status_code == 200:
            with lock:
                replies.setdefault(key, set()).add(reply.json()["addresses"]["ipv4"])
        return reply.status_code

    try:
        with ThreadPoolExecutor(32) as pool:
            codes = Counter(pool.map(post, jobs))
    finally:
        for client in clients.values():
            client.close()
    assert codes == {200: 1000}, codes
    assert all(len(addresses) == 1 for addresses in replies.values()), "one address per key"
    addresses = [next(iter(found)) for found in replies.values()]
    assert len(addresses) == len(set(addresses)) == 900, "no address assigned twice"
    slots = sql(a.database_url, "SELECT slot FROM peers")
    assert len(slots) == len(set(slots)) == 900
    owners = sql(a.database_url, "SELECT public_key, COUNT(*) FROM key_owners GROUP BY 1")
    assert all(n == 1 for _, n in owners)
    stored = {k for (k,) in sql(a.database_url, "SELECT public_key FROM peers")}
    assert stored == set(keys)
    pool_v4 = ipaddress.IPv4Network("10.96.0.0/12")
    assert all(ipaddress.ip_interface(a).ip in pool_v4 for a in addresses)


@pytest.mark.only_on("postgresql")
def test_concurrent_canaries_get_one_slot_per_key(pair) -> None:
    """Canary keys set on many nodes through both servers at once: a key has the same
    slot on every node, two keys never share one."""
    a, b = pair
    node_ids = _nodes(a, b, 6)
    keys = [wg_key() for _ in range(3)]
    jobs = [(node, keys[i % 3], (a, b)[j % 2])
            for i, node in enumerate(node_ids) for j in range(2)]  # fmt: skip

    def put(job):
        node, key, server = job
        with server.client("operator") as ops:
            reply = ops.post(f"/v1/nodes/{node}/canary", json={"public_key": key})
        return key, reply

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(put, jobs))
    by_key: dict[str, set] = {}
    for key, reply in results:
        assert reply.status_code == 200, reply.text
        by_key.setdefault(key, set()).add(reply.json()["address"]["ipv4"])
    assert all(len(slots) == 1 for slots in by_key.values()), by_key
    assert len({next(iter(s)) for s in by_key.values()}) == 3, "two keys never share a slot"


@pytest.mark.only_on("postgresql")
def test_one_ops_lease_across_two_servers(pair) -> None:
    """Ten holders per server race for one lease, five rounds (each expiring before the
    next): exactly one wins each round; the expiry is the database's clock, not a
    replica's."""
    a, b = pair
    for round_ in range(5):
        barrier = threading.Barrier(20)

        def take(job, barrier=barrier) -> int:
            server, holder = job
            with server.client("operator") as ops:
                barrier.wait()
                body = {"holder": holder, "seconds": 1}
                return ops.put("/v1/ops/lease/ops", json=body).status_code

        jobs = [((a, b)[i % 2], f"r{round_}-h{i}") for i in range(20)]
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(take, jobs))
        assert sorted(codes) == [200] + [409] * 19, codes
        held = sql(a.database_url, "SELECT holder FROM ops_leases WHERE name = 'ops'")
        assert held[0][0].startswith(f"r{round_}-")
        time.sleep(1.05)


@pytest.mark.only_on("postgresql")
def test_a_reader_following_since_never_misses_a_committed_change(pair) -> None:
    """Writers on both servers; a node follows ``since`` through both while they write.
    Versions are commit-ordered, so the deltas it reads add up to the final list."""
    a, b = pair
    (node_id,) = _nodes(a, b, 1)
    for server in pair:  # only this node is fresh for new peers: drain the others
        server.credentials[node_id] = a.credentials[node_id]
    with a.client("operator") as ops:
        for other in [n["id"] for n in ops.get("/v1/nodes").json()["nodes"]]:
            if other != node_id:
                assert (
                    ops.post("/node/drain", json={"id": other, "reason": "manual"}).status_code
                    == 202
                )
    seen: set[str] = set()
    version = a.client(node_id).get(f"/v1/nodes/{node_id}/peers").json()
    for peer in version["peers"]:
        seen.add(peer["public_key"])
    since = version["version"]
    stop = threading.Event()
    added: list[str] = []

    def write(server: ControlPlane) -> None:
        with server.client("client") as api:
            while not stop.is_set() and len(added) < 400:
                key = wg_key()
                assert api.post("/v1/peers", json={"public_key": key}).status_code == 200
                added.append(key)

    writers = [threading.Thread(target=write, args=(s,)) for s in (a, b, a, b)]
    for writer in writers:
        writer.start()
    readers = [s.client(node_id) for s in pair]
    try:
        turn = 0
        while any(w.is_alive() for w in writers) or turn < 2:
            turn += 1
            reply = readers[turn % 2].get(f"/v1/nodes/{node_id}/peers", params={"since": since})
            body = reply.json()
            assert not body["full"], "a delta (the log keeps enough)"
            seen.update(p["public_key"] for p in body["peers"])
            seen.difference_update(body["removed"])
            since = body["version"]
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
        for reader in readers:
            reader.close()
    final = readers and a.client(node_id).get(f"/v1/nodes/{node_id}/peers").json()
    assert set(added) <= seen, f"missed {len(set(added) - seen)} committed changes"
    assert seen == {p["public_key"] for p in final["peers"]}


def test_heartbeats_touch_only_the_node_row(cp: ControlPlane) -> None:
    """No version, no change-log row, no wake-up: a held long-poll sleeps through them."""
    node_id = cp.register()
    cp.heartbeat(node_id)
    with cp.client(node_id) as node:
        version = node.get(f"/v1/nodes/{node_id}/peers").json()["version"]
        changes = sql(cp.database_url, "SELECT COUNT(*) FROM changes")
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            held = pool.submit(
                node.get, f"/v1/nodes/{node_id}/peers", params={"since": version, "wait": 2}
            )
            for _ in range(5):
                cp.heartbeat(node_id, active_peers=3)
            reply = held.result(timeout=30)
        assert time.monotonic() - started >= 1.9, "not woken by heartbeats"
    assert reply.json()["version"] == version and reply.json()["peers"] == []
    assert sql(cp.database_url, "SELECT COUNT(*) FROM changes") == changes
