"""Two replicas on one real PostgreSQL behind HAProxy, failing on purpose (issue 24):
a change made through one replica wakes a long-poll held on the other; a killed
listener, a restarted PostgreSQL and a killed replica lose no change. Every wait is
bounded; the module shares one pair of replicas (the last test kills replica A)."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import psycopg
import pytest

from idra.netns import Topology
from tests.controlplane.conftest import start
from tests.replicas.replicas import (
    HEARTBEAT_S,
    NodeAgent,
    add_peer,
    converge,
    start_agent,
    start_replicas,
    wait_healthy,
)


@pytest.fixture(scope="module")
def replicas(postgres, tmp_path_factory):
    pair = start_replicas(tmp_path_factory.mktemp("replicas"), postgres)
    yield pair
    pair.stop()


@pytest.fixture(scope="module")
def fleet(replicas, pyz, tmp_path_factory):
    """Three nodes, each the packaged agent with a wireguard-go interface in a namespace
    of its own, registered and in step through the balancer; all removed afterwards."""
    started: list[NodeAgent] = []
    tmp = tmp_path_factory.mktemp("fleet")
    with Topology("repl") as topo:
        try:
            for index in range(3):
                home = tmp / f"node{index}"
                started.append(start_agent(replicas, pyz, topo, home, f"192.0.2.{10 + index}"))
            deadline = time.monotonic() + 30
            while len(heartbeats(replicas.database_url, started)) < len(started):
                assert time.monotonic() < deadline, "the agents did not register"
                time.sleep(0.2)
            converge(started, replicas.database_url, timeout=15)
            yield started
        finally:
            for agent in started:
                agent.stop()


def heartbeats(url: str, agents: list[NodeAgent]) -> dict[str, float]:
    """Each agent's node's last heartbeat (wall clock), for the nodes that have one."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT instance_id, last_heartbeat_at FROM nodes WHERE instance_id = ANY(%s) "
            "AND last_heartbeat_at IS NOT NULL",
            ([a.instance_id for a in agents],),
        ).fetchall()
    return dict(rows)


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


def test_postgresql_restarts_mid_traffic_and_every_interface_converges(
    replicas, fleet, postgres_cluster
):
    """A client app keeps adding peers through the balancer (each retried until it
    succeeds) while PostgreSQL restarts: both replicas recover (pool and listener) and
    every node's interface holds exactly its peers in the database, none lost."""
    token, added = replicas.lb.tokens["client"], []
    stop, after_restart = threading.Event(), threading.Event()

    def client_app() -> None:
        while not stop.is_set():
            added.append(add_peer(replicas.lb.url, token)["public_key"])
            if after_restart.is_set():
                stop.wait(0.2)

    writer = threading.Thread(target=client_app)
    writer.start()
    try:
        time.sleep(0.5)
        postgres_cluster.restart()
        after_restart.set()
        count = len(added)
        deadline = time.monotonic() + 20
        while len(added) < count + 3:
            assert time.monotonic() < deadline, "no peer was added after the restart"
            time.sleep(0.05)
    finally:
        stop.set()
        writer.join(30)
    for replica in (replicas.a, replicas.b):
        wait_listening(replica)
    expected = converge(fleet, replicas.database_url, timeout=HEARTBEAT_S * 4)
    stored = {k for peers in expected.values() for k in peers}
    assert set(added) <= stored, "a peer added through the restart is lost"
    assert sum(len(a.peers()) for a in fleet) > 0
    assert_no_double_assignment(fleet, replicas.database_url)


def wait_listening(replica, timeout: float = 15) -> None:
    """Until the replica answers /healthz 200 with its listener up (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            with httpx.Client(base_url=replica.url, timeout=2) as http:
                reply = http.get("/healthz")
            if reply.status_code == 200 and reply.json()["listener"] == "ok":
                return
        assert time.monotonic() < deadline, f"{replica.url} did not recover"
        time.sleep(0.1)


def assert_no_double_assignment(fleet: list[NodeAgent], url: str) -> None:
    """No address on two interfaces (or twice in the database), no key on two."""
    keys = [k for agent in fleet for k in agent.peers()]
    assert len(keys) == len(set(keys)), "a peer is on two nodes"
    addresses = [ip for agent in fleet for ips in agent.peers().values() for ip in ips]
    assert len(addresses) == len(set(addresses)), "an address is on two interfaces"
    with psycopg.connect(url) as conn:
        slots = conn.execute("SELECT slot FROM peers").fetchall()
    assert len(slots) == len(set(slots)), "an address was assigned twice"


def test_replica_a_killed_agents_continue_on_b(replicas, fleet):
    """Replica A dies while the agents' long-polls and heartbeats go through the
    balancer: every node heartbeats on B within one interval (and one retry), the peers
    added afterwards reach the interfaces, none is lost or assigned twice."""
    token = replicas.lb.tokens["client"]
    try:
        before = [add_peer(replicas.lb.url, token)["public_key"] for _ in range(4)]
        converge(fleet, replicas.database_url, timeout=HEARTBEAT_S * 2)
        killed_at = time.time()
        replicas.a.process.kill()
        replicas.a.process.wait(10)
        within = killed_at + HEARTBEAT_S + 1  # the next heartbeat, a retry on B
        while time.time() < within and not all(
            t > killed_at for t in heartbeats(replicas.database_url, fleet).values()
        ):
            time.sleep(0.05)
        late = [i for i, t in heartbeats(replicas.database_url, fleet).items() if t <= killed_at]
        assert not late, f"{late} did not heartbeat on B within one interval"
        added = [add_peer(replicas.lb.url, token)["public_key"] for _ in range(6)]
        expected = converge(fleet, replicas.database_url, timeout=HEARTBEAT_S * 3)
        stored = {k for peers in expected.values() for k in peers}
        assert set(before + added) <= stored, "a peer is lost"
        assert_no_double_assignment(fleet, replicas.database_url)
    finally:
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
