"""The PostgreSQL fan-out (idra/controlplane/fanout.py) against a real server: NOTIFY is
delivered on commit only, a killed listener reconnects and wakes everyone, a change
nobody announced is caught by the fallback poll, an oversized batch wakes everyone."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from idra.controlplane import fanout
from idra.controlplane.fanout import PgNotifier

VERSION_SQL = "SELECT v FROM fanout_version"


@pytest.fixture(scope="module")
def db(postgres):
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute("CREATE TABLE fanout_version (v bigint NOT NULL)")
        conn.execute("INSERT INTO fanout_version VALUES (0)")
    return postgres


@pytest.fixture
def notifier(db):
    n = PgNotifier(db, VERSION_SQL, poll_s=0.5, backoff_max_s=0.5)
    assert n.wait_ready(10), "the listener never connected"
    yield n
    n.close()
    assert n.join(5), "the listener thread did not stop"


def write(url: str, nodes: list[str], *, announce: bool = True, commit: bool = True) -> int:
    """One writing transaction: bump the version, NOTIFY in the same transaction."""
    with psycopg.connect(url) as conn:
        version = conn.execute("UPDATE fanout_version SET v = v + 1 RETURNING v").fetchone()[0]
        if announce:
            fanout.notify(conn.execute, version, nodes)
        if commit:
            conn.commit()
        else:
            conn.rollback()
    return version


async def woken(notifier: PgNotifier, node: str, action, timeout: float) -> float | None:
    """Seconds until a waiter on ``node`` wakes after ``action()`` runs (None: never)."""
    sub = notifier.subscribe(node)
    try:
        start = time.monotonic()
        await asyncio.to_thread(action)
        if await sub.wait(timeout):
            return time.monotonic() - start
        return None
    finally:
        sub.close()


def test_payload_is_small_and_parses_back():
    assert fanout.parse(fanout.payload(7, ["node-b", "node-a", "node-a"])) == (
        7,
        ["node-a", "node-b"],
    )
    many = [f"node-{i:012x}" for i in range(1000)]
    text = fanout.payload(8, many)
    assert text == "8 *" and fanout.parse(text) == (8, None)
    assert fanout.parse("junk") == (0, None)  # unreadable: everyone re-reads


def test_commit_wakes_only_its_node_and_a_rollback_wakes_no_one(db, notifier):
    took = asyncio.run(woken(notifier, "node-a", lambda: write(db, ["node-a"]), 2))
    assert took is not None and took < 1
    assert asyncio.run(woken(notifier, "node-b", lambda: write(db, ["node-a"]), 0.5)) is None
    rolled_back = lambda: write(db, ["node-a"], commit=False)  # noqa: E731
    assert asyncio.run(woken(notifier, "node-a", rolled_back, 0.5)) is None


def test_an_oversized_batch_wakes_everyone(db, notifier):
    many = [f"node-{i:012x}" for i in range(1000)]
    took = asyncio.run(woken(notifier, "node-elsewhere", lambda: write(db, many), 2))
    assert took is not None and notifier.wake_alls["overflow"] >= 1


def test_killed_listener_reconnects_and_every_waiter_rereads(db, postgres_cluster, notifier):
    def kill() -> None:
        rows = postgres_cluster.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'idra-listener'"
        )
        assert rows == [(True,)]

    # A waiter on a node nobody wrote to is woken too: it re-reads, nothing is lost.
    took = asyncio.run(woken(notifier, "node-quiet", kill, 5))
    assert took is not None and took < 3
    deadline = time.monotonic() + 10
    while notifier.reconnects < 1 or notifier.health()["listener"] != "ok":
        assert time.monotonic() < deadline, "the listener did not come back"
        time.sleep(0.05)
    assert notifier.wake_alls["reconnect"] >= 1
    # And it listens again.
    took = asyncio.run(woken(notifier, "node-a", lambda: write(db, ["node-a"]), 2))
    assert took is not None and took < 1


def test_a_change_nobody_announced_is_caught_by_the_fallback_poll(db, notifier):
    silent = lambda: write(db, ["node-a"], announce=False)  # noqa: E731
    took = asyncio.run(woken(notifier, "node-a", silent, 5))
    assert took is not None and took < 3 * notifier.poll_s + 1
    assert notifier.wake_alls["missed"] >= 1


def test_health_and_metrics_report_the_listener(notifier):
    assert notifier.health()["listener"] == "ok"
    names = {family.name for family in notifier.collect()}
    assert {"idra_controlplane_listener_up", "idra_controlplane_listener_wake_all"} <= names
