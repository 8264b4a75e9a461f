"""The agent's compact peer table (issue 15): the same answers as the dicts it replaced,
the owner index in step with every write, the mark of a full sync, no per-peer Python
objects kept."""

from __future__ import annotations

import gc
import ipaddress
import tracemalloc

from node_daemon.peers import plan
from node_daemon.state import PeerTable

from .scripted import random_key

NETS = [ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd49:4452:4100::/64")]


def test_reads_and_writes_like_a_mapping_with_its_owner_index() -> None:
    a, b = random_key(), random_key()
    table = PeerTable([(a, "10.96.0.2/32,fd49:4452:4100::2/128")])
    assert a in table and b not in table and 42 not in table and len(table) == 1
    assert table.get(a) == "10.96.0.2/32,fd49:4452:4100::2/128" and table.get(b) is None
    assert table.owners.get("10.96.0.2/32") == a == table.owners.get("fd49:4452:4100::2/128")
    table.put(a, "10.96.0.3/32")  # moved: the old addresses are free again
    assert table.owners.get("10.96.0.2/32") is None and table.owners.get("10.96.0.3/32") == a
    table.put(b, "10.96.0.2/32")
    assert dict(table.items()) == {a: "10.96.0.3/32", b: "10.96.0.2/32"} and list(table) == [a, b]
    assert len(table.owners) == 2
    assert table.pop(a) == "10.96.0.3/32" and table.pop(a, "gone") == "gone"
    assert table.owners.get("10.96.0.3/32") is None and table.owners.get("10.96.0.2/32") == b


def test_a_malformed_key_is_simply_absent() -> None:
    """A reply's ``removed`` or page may hold anything: no lookup raises or matches."""
    a = random_key()
    table = PeerTable([(a, "10.96.0.2/32")])
    other_spelling = a[:-2] + chr(ord(a[-2]) + 1) + "="  # same bytes, non-canonical
    for bad in ("abc", "!!!", "", a + "A", other_spelling, "A" * 44):
        assert bad not in table and table.get(bad) is None and not table.marked(bad)
        assert table.pop(bad, "none") == "none"
    table.mark(["abc", a])
    assert table.marked(a) and table.unmarked() == [] and len(table) == 1


def test_an_address_handed_on_stays_with_its_new_owner() -> None:
    """An address moved to another peer in one batch: the old holder's later update or
    removal does not take it from the new one."""
    a, b = random_key(), random_key()
    table = PeerTable([(a, "10.96.0.2/32")])
    table.put(b, "10.96.0.2/32")
    table.put(a, "10.96.0.9/32")
    assert table.owners.get("10.96.0.2/32") == b
    table.pop(a)
    assert table.owners.get("10.96.0.2/32") == b


def test_the_planner_sees_the_table_as_it_saw_the_dicts() -> None:
    a, b = random_key(), random_key()
    table = PeerTable([(a, "10.96.0.2/32")])
    taken = plan([{"public_key": b, "allowed_ips": ["10.96.0.2/32"]}], [], table, NETS,
                 full=False, owners=table.owners)  # fmt: skip
    assert taken.rejected == {"allowed IP owned by another peer": 1} and not taken.upserts
    full = plan([{"public_key": b, "allowed_ips": ["10.96.0.2/32"]}], [], table, NETS,
                full=True, owners=table.owners)  # fmt: skip
    assert full.upserts == {b: "10.96.0.2/32"} and full.removes == [a]


def test_mark_of_a_full_sync() -> None:
    keys = [random_key() for _ in range(5)]
    table = PeerTable((key, f"10.96.0.{n + 2}/32") for n, key in enumerate(keys))
    table.unmark()
    table.mark([*keys[:3], random_key()])  # an unknown key is ignored
    assert table.marked(keys[0]) and not table.marked(keys[4])
    assert sorted(table.unmarked()) == sorted(keys[3:])


def test_kept_state_is_not_python_objects() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        table = PeerTable((random_key(), f"10.96.{n // 250}.{n % 250 + 2}/32") for n in range(5000))
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(table) == 5000
    assert heap < 5000 * 20, f"{heap / 5000:.0f} bytes of Python heap a peer"
