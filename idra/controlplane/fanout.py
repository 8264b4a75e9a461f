"""Change fan-out across replicas on PostgreSQL: ``NOTIFY`` in the writing transaction,
one dedicated ``LISTEN`` connection per replica (ARCHITECTURE §9).

The writer calls :func:`notify` inside its transaction, so PostgreSQL delivers the
notification only on commit (and never for a rollback). Its payload names the new
version and the nodes whose peers changed; when that would not fit far below
PostgreSQL's 8,000-byte limit it says ``*``: every waiter re-reads.

:class:`PgNotifier` is the :class:`~idra.controlplane.notify.ChangeNotifier` of a
replica: a :class:`LocalNotifier` for the long-polls held here, fed by a thread that
holds one autocommit connection (outside any pool: it must reach the primary directly,
never through a transaction-mode pooler) and ``LISTEN``\\s. A notification only wakes
waiters; they always re-read the database. Whenever a notification may have been
missed, everyone is woken to re-read, so no change is lost:

- on every (re)connection (notifications sent while no one listened are gone);
- when the fallback poll (every ``poll_s``, on the listener's own connection) finds a
  version that no notification announced within one poll interval (a silent listener);
- when the listener's connection fails (waiters re-read; the thread reconnects).

There is no queue between the listener and the waiters (a wake sets an event, which
coalesces), so nothing here can overflow; PostgreSQL's own notification queue is
reported (``pg_notification_queue_usage``). :meth:`PgNotifier.health` is the watchdog:
the listener is healthy when its last successful check is younger than three poll
intervals; ``/healthz`` and ``/metrics`` report it. Models: coder/coder
``coderd/database/pubsub`` (one listener, drops signalled to subscribers), Firezone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from idra.controlplane.notify import LocalNotifier

CHANNEL = "idra_changes"
MAX_PAYLOAD = 4000  # bytes, half PostgreSQL's limit: larger batches say "everyone"
EVERYONE = "*"
log = logging.getLogger("idra.controlplane.fanout")


def payload(version: int, node_ids: Iterable[str]) -> str:
    """``"<version> <node id> …"``, or ``"<version> *"`` when the ids would not fit."""
    text = " ".join([str(version), *sorted(set(node_ids))])
    return text if len(text.encode()) <= MAX_PAYLOAD else f"{version} {EVERYONE}"


def parse(text: str) -> tuple[int, list[str] | None]:
    """(version, node ids), or (version, None) for everyone; junk means everyone too."""
    head, _, rest = text.partition(" ")
    ids = rest.split()
    try:
        version = int(head)
    except ValueError:
        return 0, None
    return version, None if EVERYONE in ids else ids


def notify(
    execute: Callable[[str, dict[str, Any]], Any], version: int, nodes: Iterable[str]
) -> None:
    """Queue the notification inside the writer's transaction (sent on commit only).
    ``execute(sql, params)`` runs one statement on that transaction's connection."""
    execute("SELECT pg_notify(%(channel)s, %(payload)s)",
            {"channel": CHANNEL, "payload": payload(version, nodes)})  # fmt: skip


# The listener's connection: TCP keepalives and a user timeout notice a dead peer (a
# crashed primary, a dropped NAT entry) in seconds rather than the kernel's hours.
CONNECT_OPTIONS = {
    "autocommit": True,
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "application_name": "idra-listener",
}


class PgNotifier(LocalNotifier):
    """The long-polls of this replica, woken by any replica's commits."""

    def __init__(
        self,
        url: str,
        version_sql: str,
        poll_s: float = 5.0,
        backoff_max_s: float = 5.0,
    ) -> None:
        """``url``: libpq URL of the primary; ``version_sql``: one row, one column, the
        latest committed version (the fallback poll)."""
        super().__init__()
        self.url, self.version_sql, self.poll_s = url, version_sql, poll_s
        self.backoff_max_s = backoff_max_s
        self.connected = False
        self.checked_at = 0.0  # monotonic time of the last successful check
        self.seen = 0  # highest version a notification (or a wake-all) covered
        self.reconnects = 0
        self.notifications = 0
        self.wake_alls: dict[str, int] = {"reconnect": 0, "missed": 0, "overflow": 0}
        self.queue_usage = 0.0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idra-listener", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the first ``LISTEN`` is in place."""
        return self._ready.wait(timeout)

    # -- waking ------------------------------------------------------------------------

    def wake_all(self, reason: str) -> None:
        """Every waiter of this replica re-reads."""
        self.wake_alls[reason] = self.wake_alls.get(reason, 0) + 1
        with self._lock:
            nodes = list(self._waiters)
        super().publish(nodes)

    def _heard(self, text: str) -> None:
        self.notifications += 1
        version, nodes = parse(text)
        self.seen = max(self.seen, version)
        if nodes is None:
            self.wake_all("overflow")
        else:
            super().publish(nodes)

    # -- the listener thread -------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        while not self.closed:
            attempt_at = time.monotonic()
            try:
                with psycopg.connect(self.url, **CONNECT_OPTIONS) as conn:
                    self._listen(conn)
            except Exception as exc:  # whatever it was: listen again
                if self.closed:
                    break
                log.warning("change listener: %s; reconnecting", type(exc).__name__)
            finally:
                self.connected = False
            if self.closed:
                break
            if self.checked_at >= attempt_at:  # it had listened: a fresh backoff
                backoff = 0.1
            # (Held long-polls are woken once listening again: see _listen.)
            time.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    def _listen(self, conn: psycopg.Connection) -> None:
        conn.execute(f"LISTEN {CHANNEL}")
        pending, next_check = self._check(conn), time.monotonic() + self.poll_s
        self.connected = True
        if self._ready.is_set():
            # Whatever was committed while no one listened: everyone re-reads, now that
            # every later commit is announced.
            self.reconnects += 1
            log.info("change listener reconnected")
            self.seen = max(self.seen, pending)
            self.wake_all("reconnect")
        self._ready.set()
        while not self.closed:
            # Short rounds, so that close() is noticed within a second.
            left = max(0.01, min(1.0, next_check - time.monotonic()))
            for note in conn.notifies(timeout=left):
                self._heard(note.payload)
            if time.monotonic() < next_check:
                continue
            if pending > self.seen:
                # Committed more than one poll interval ago, never announced.
                log.warning("change listener: a change was not announced; waking all")
                self.seen = pending
                self.wake_all("missed")
            pending, next_check = self._check(conn), time.monotonic() + self.poll_s

    def _check(self, conn: psycopg.Connection) -> int:
        """The fallback poll on the listener's own connection (so it also proves the
        connection alive): the latest version and the notification queue's usage."""
        row = conn.execute(self.version_sql).fetchone()
        version = (row[0] if row else 0) or 0
        usage = conn.execute("SELECT pg_notification_queue_usage()").fetchone()[0]
        self.queue_usage, self.checked_at = float(usage), time.monotonic()
        if not self.seen:
            self.seen = version  # the starting point: nothing before it is news
        return version

    # -- the interface ---------------------------------------------------------------------

    def close(self) -> None:
        """Every wait ends; the listener thread stops within a second (not awaited)."""
        super().close()

    def join(self, timeout: float) -> bool:
        """Wait for the listener thread to end (after :meth:`close`); True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def health(self) -> dict[str, Any]:
        """The watchdog: ``ok`` when connected and checked within three poll intervals."""
        age = time.monotonic() - self.checked_at if self.checked_at else None
        ok = self.connected and age is not None and age < 3 * self.poll_s + 1
        return {"listener": "ok" if ok else "down", "checked_s_ago": age and round(age, 1)}

    def collect(self):
        """Prometheus collector (aggregates only)."""
        yield GaugeMetricFamily(
            "idra_controlplane_listener_up",
            "1 when the change listener (LISTEN on the primary) is healthy.",
            value=int(self.health()["listener"] == "ok"),
        )
        yield CounterMetricFamily(
            "idra_controlplane_listener_reconnects",
            "Times the change listener reconnected.", value=self.reconnects,
        )  # fmt: skip
        yield CounterMetricFamily(
            "idra_controlplane_listener_notifications",
            "Change notifications received.", value=self.notifications,
        )  # fmt: skip
        woken = CounterMetricFamily(
            "idra_controlplane_listener_wake_all",
            "Times every held long-poll was woken to re-read, by reason.", labels=["reason"],
        )  # fmt: skip
        for reason, count in sorted(self.wake_alls.items()):
            woken.add_metric([reason], count)
        yield woken
        yield GaugeMetricFamily(
            "idra_controlplane_notify_queue_usage",
            "PostgreSQL's notification queue in use (0..1).", value=self.queue_usage,
        )  # fmt: skip
