"""Two replicas on one real PostgreSQL behind HAProxy, failing on purpose (issue 24):
a change made through one replica wakes a long-poll held on the other; a killed
listener, a restarted PostgreSQL and a killed replica lose no change. Every wait is
bounded; the module shares one pair of replicas (the last test kills replica A)."""

from __future__ import annotations

import threading
import time

import httpx
import psycopg
import pytest

from tests.controlplane.conftest import start
from tests.replicas.replicas import (
    HEARTBEAT_S,
    Agent,
    Replicas,
    add_peer,
    converge,
    start_replicas,
    wait_healthy,
)


@pytest.fixture(scope="module")
def replicas(postgres, tmp_path_factory):
    pair = start_replicas(tmp_path_factory.mktemp("replicas"), postgres)
    yield pair
    pair.stop()


def database_peers(url: str) -> dict[str, set[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT node_id, public_key FROM peers").fetchall()
    found: dict[str, set[str]] = {}
    for node_id, key in rows:
        found.setdefault(node_id, set()).add(key)
    return found


def agents(replicas: Replicas, count: int) -> list[Agent]:
    """Nodes registered through the balancer, each with its sync loop and heartbeat."""
    started = []
    for _ in range(count):
        node_id = replicas.lb.register()
        agent = Agent(replicas.lb.url, node_id, replicas.lb.credentials[node_id]).start()
        started.append(agent)
    deadline = time.monotonic() + 10
    while not all(a.heartbeats and a.version is not None for a in started):
        assert time.monotonic() < deadline, "agents did not start syncing"
        time.sleep(0.05)
    return started


def held_on(replica, node_id: str, since: int, wait: float) -> dict:
    """A long-poll held directly on one replica; the reply and how long it was held."""
    with replica.client(node_id) as http:
        start = time.monotonic()
        reply = http.get(f"/v1/nodes/{node_id}/peers", params={"since": since, "wait": wait},
                         timeout=wait + 5)  # fmt: skip
    assert reply.status_code == 200, reply.text
    return reply.json() | {"held_s": time.monotonic() - start}


def version_of(replica, node_id: str) -> int:
    with replica.client(node_id) as http:
        return http.get(f"/v1/nodes/{node_id}/peers").json()["version"]


def hold_in_thread(replica, node_id: str, since: int, wait: float):
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(held_on(replica, node_id, since, wait)))
    thread.start()
    time.sleep(0.3)  # it is held (subscribed) before the change is made
    return thread, box


def test_a_peer_added_through_a_wakes_a_long_poll_held_on_b(replicas):
    node_id = replicas.a.register()
    replicas.a.heartbeat(node_id)
    since = version_of(replicas.b, node_id)
    thread, box = hold_in_thread(replicas.b, node_id, since, 10)
    start = time.monotonic()
    peer = add_peer(replicas.a.url, replicas.a.tokens["client"])
    thread.join(15)
    woke = time.monotonic() - start
    assert [p["public_key"] for p in box["peers"]] == [peer["public_key"]]
    assert woke < 1, f"woken after {woke:.2f} s"


def _kill_listeners(postgres_cluster, database_url: str) -> int:
    database = database_url.rsplit("/", 1)[1]
    rows = postgres_cluster.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "  # noqa: S608
        f"WHERE application_name = 'idra-listener' AND datname = '{database}'"
    )
    return len(rows)


def test_a_killed_listener_reconnects_and_no_change_is_lost(replicas, postgres_cluster):
    node_id = replicas.a.register()
    replicas.a.heartbeat(node_id)
    since = version_of(replicas.b, node_id)
    thread, box = hold_in_thread(replicas.b, node_id, since, 20)
    assert _kill_listeners(postgres_cluster, replicas.database_url) == 2
    # Committed while B's listener is gone: its NOTIFY reaches no one on B.
    peer = add_peer(replicas.a.url, replicas.a.tokens["client"])
    thread.join(25)
    assert [p["public_key"] for p in box["peers"]] == [peer["public_key"]]
    assert box["held_s"] < 3, "the reconnect did not wake the held long-poll"
    with replicas.b.client("metrics") as http:
        metrics = http.get("/metrics").text
    assert "idra_controlplane_listener_reconnects_total 1.0" in metrics
    with httpx.Client(base_url=replicas.b.url) as http:
        assert http.get("/healthz").json()["listener"] == "ok"


def test_healthz_is_503_while_the_listener_is_down(replicas, postgres_cluster):
    """The listener cannot reconnect (the database refuses new connections; the pool's
    open ones still answer): the replica says so and the balancer takes it out."""
    database = replicas.database_url.rsplit("/", 1)[1]
    with httpx.Client(base_url=replicas.b.url, timeout=5) as http:
        for _ in range(3):  # the pool holds open connections
            assert http.get("/healthz").status_code == 200
        postgres_cluster.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        try:
            _kill_listeners(postgres_cluster, replicas.database_url)
            deadline = time.monotonic() + 5
            while (reply := http.get("/healthz")).status_code == 200:
                assert time.monotonic() < deadline, "/healthz stayed 200 without a listener"
                time.sleep(0.1)
            assert reply.status_code == 503 and reply.json()["listener"] == "down"
        finally:
            postgres_cluster.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        deadline = time.monotonic() + 10
        while http.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the listener did not come back"
            time.sleep(0.1)
    wait_healthy(replicas.lb, 2)


def test_postgresql_restarts_mid_traffic_and_every_agent_converges(replicas, postgres_cluster):
    fleet = agents(replicas, 3)
    token = replicas.lb.tokens["client"]
    try:
        added = [add_peer(replicas.lb.url, token) for _ in range(6)]
        postgres_cluster.restart()
        # retried through the outage, as a client app would
        added += [add_peer(replicas.lb.url, token) for _ in range(6)]
        wait_healthy(replicas.lb, 2)
        expected = database_peers(replicas.database_url)
        converge(fleet, expected, timeout=15)
        stored = {k for keys in expected.values() for k in keys}
        assert {p["public_key"] for p in added} <= stored  # no peer lost
        assert sum(len(a.peers) for a in fleet) > 0
    finally:
        for agent in fleet:
            agent.stop.set()


def test_replica_a_killed_agents_continue_on_b(replicas):
    fleet = agents(replicas, 3)
    token = replicas.lb.tokens["client"]
    try:
        for _ in range(4):
            add_peer(replicas.lb.url, token)
        killed_at = time.monotonic()
        replicas.a.process.kill()
        replicas.a.process.wait(10)
        added = [add_peer(replicas.lb.url, token) for _ in range(6)]
        expected = database_peers(replicas.database_url)
        converge(fleet, expected, timeout=HEARTBEAT_S * 3)
        # Every agent's heartbeat goes on within one interval (and a retry's delay).
        within = killed_at + HEARTBEAT_S + 1
        while time.monotonic() < within and not all(
            any(t > killed_at for t in a.heartbeats) for a in fleet
        ):
            time.sleep(0.05)
        for agent in fleet:
            after = [t for t in agent.heartbeats if t > killed_at]
            assert after and after[0] < within, f"{agent.node_id} stopped heartbeating"
        every_key = [k for keys in expected.values() for k in keys]
        assert len(every_key) == len(set(every_key))  # no key owned twice
        assert {p["public_key"] for p in added} <= set(every_key)  # no peer lost
        with psycopg.connect(replicas.database_url) as conn:
            slots = conn.execute("SELECT slot FROM peers").fetchall()
        assert len(slots) == len(set(slots)), "an address was assigned twice"
    finally:
        for agent in fleet:
            agent.stop.set()
        replicas.restart("a")


def test_two_replicas_start_at_once_on_an_empty_database_migrating_once(postgres_cluster, tmp_path):
    url = postgres_cluster.create_database()
    try:
        dirs = [tmp_path / "x", tmp_path / "y"]
        for d in dirs:
            d.mkdir()
        started: list = []
        threads = [
            threading.Thread(target=lambda d=d: started.append(start(d, database=url)))
            for d in dirs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        try:
            assert len(started) == 2, "a replica did not start"
            # A second upgrade would have failed on CREATE TABLE (and stopped its replica)
            # or seeded the version counter twice.
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
                assert conn.execute("SELECT count(*) FROM counters").fetchone() == (1,)
            for replica in started:
                assert replica.process.poll() is None
                with httpx.Client(base_url=replica.url) as http:
                    assert http.get("/healthz").status_code == 200
        finally:
            for replica in started:
                replica.process.terminate()
                replica.process.wait(10)
    finally:
        postgres_cluster.drop_database(url)
