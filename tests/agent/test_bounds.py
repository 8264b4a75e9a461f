"""The agent's bounds against a hostile control plane (issue 23, What to build 9), with
the built node-daemon.pyz, a scripted control plane (tests/agent/scripted.py) and
wireguard-go in a namespace.

- A paged full list that never ends: each attempt stops once the listed peers pass
  ``--max-peers`` (a ``too_many_peers`` fault), the peers stay, the agent retries with
  backoff; the interface never holds more than ``--max-peers`` and memory stays flat.
- Peers waiting for the end of a list (their address handed on from a peer not
  listed) hold at most two pages of addresses; the rest come with another full list.
- The reply cap follows ``--max-peers`` (256 bytes a peer) and a next page is read
  only as far as its page size needs.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import Env, eventually, scripted_world, start_scripted_agent
from .scripted import ScriptedControlPlane, random_key

MAX_PEERS, PAGE = 600, 100
CLIENT = {random_key(): ["10.96.0.2/32"]}


class HostileControlPlane(ScriptedControlPlane):
    """Pages its full lists (``paged``: the desired peers, ``limit`` a page), or with
    ``endless`` answers every peers request with a page of new peers and a next page
    (``page_peers`` a page, default the agent's ``limit``), for ever."""

    def __init__(self) -> None:
        super().__init__()
        self.endless = self.paged = False
        self.page_peers: int | None = None
        self.pages = self.listed = self.starts = 0

    def answer(self, method, path, query, body, headers):
        paging = self.endless or self.paged
        if not (paging and method == "GET" and path.endswith("/peers") and self.node_ids):
            return super().answer(method, path, query, body, headers)
        limit = int(query.get("limit", [PAGE])[0])
        cursor = query.get("cursor", [None])[0]
        if self.paged:
            if cursor is None and query.get("since") == [str(self.version)]:
                return super().answer(method, path, query, body, headers)  # no change
            self.starts += cursor is None
            offset = int(cursor.split(".")[1]) if cursor else 0
            peers = self._peers()[offset : offset + limit]
            after = offset + limit
            next_cursor = f"{self.version}.{after}" if after < len(self.desired) else None
            return 200, {"version": self.version, "full": True, "peers": peers, "removed": [],
                         "next_cursor": next_cursor}  # fmt: skip
        peers = []
        self.pages += 1
        for _ in range(self.page_peers or limit):
            n = self.listed = self.listed + 1
            address = f"10.{97 + n // 65536}.{n // 256 % 256}.{n % 256}/32"
            peers.append({"public_key": random_key(), "allowed_ips": [address]})
        return 200, {"version": self.version, "full": True, "peers": peers, "removed": [],
                     "next_cursor": f"{self.version}.{self.listed}"}  # fmt: skip


@pytest.fixture
def world(tmp_path: Path):
    with scripted_world(tmp_path, HostileControlPlane(), "bnd") as world:
        yield world


def start_agent(env: Env, pyz: Path) -> None:
    """The packaged agent with a small --max-peers and no --max-reply-bytes."""
    start_scripted_agent(
        env, pyz, "--heartbeat-interval", "0.3", "--scan-interval", "1", "--backoff-max", "1",
        "--request-deadline", "5", "--max-peers", str(MAX_PEERS), "--page-size", str(PAGE),
    )  # fmt: skip


def faults(env: Env, kind: str) -> float:
    return env.metric("idra_agent_faults_total", f'dependency="control_plane",kind="{kind}"')


def rss_kib(pid: int) -> int:
    """Resident memory of the agent's process (the pyz's Python)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_endless_full_list_is_cut_and_peers_stay(world, pyz: Path) -> None:
    env, cp, _ = world
    cp.set_peers(CLIENT)
    start_agent(env, pyz)
    assert set(env.dump()) == set(CLIENT)
    cp.endless = True
    cp.set_peers(CLIENT)  # a new version: the agent asks, and the list never ends
    eventually(lambda: faults(env, "too_many_peers") >= 2, what="two attempts cut")
    rss, sizes = rss_kib(env.agent.pid), []
    started, pages = faults(env, "too_many_peers"), cp.pages
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        sizes.append(len(env.dump()))
        time.sleep(0.5)
    attempts = faults(env, "too_many_peers") - started
    assert attempts >= 3, "cut, retried with backoff (at most 1 s here), cut again"
    assert (cp.pages - pages) / attempts <= MAX_PEERS / PAGE + 2, "each attempt stops"
    assert max(sizes) <= MAX_PEERS, "the interface never holds more than --max-peers"
    assert set(CLIENT) <= set(env.dump()), "the peers stay"
    growth = rss_kib(env.agent.pid) - rss
    print(f"{attempts:.0f} attempts, {cp.pages - pages} pages, RSS {rss} KiB {growth:+} KiB")
    assert growth < 8 * 1024, "memory stays flat"
    assert env.agent.poll() is None

    cp.endless = False  # the control plane recovers: a complete list replaces the junk
    eventually(lambda: set(env.dump()) == set(CLIENT), timeout=10, what="convergence")
    log = env.log.read_text()
    assert "Traceback" not in log and "too_many_peers" in log


def test_reply_caps_follow_max_peers(world, pyz: Path) -> None:
    env, cp, _ = world
    cp.set_peers(CLIENT)
    start_agent(env, pyz)
    cap = MAX_PEERS * 256 + (64 << 10)  # no --max-reply-bytes: 256 bytes a peer
    cp.oversize = cap + 1024
    oversized = faults(env, "oversized")
    cp.set_fault("oversized")
    cp.set_peers(CLIENT)
    eventually(lambda: faults(env, "oversized") > oversized, what="a reply over the cap cut")
    cp.set_fault(None)
    oversized = faults(env, "oversized")
    cp.page_peers, cp.endless = PAGE + 1, True  # a next page longer than asked for
    cp.set_peers(CLIENT)
    eventually(lambda: faults(env, "oversized") > oversized, what="an overlong page refused")
    live = set(env.dump())
    assert set(CLIENT) <= live, "the peers stay"
    assert len(live) <= MAX_PEERS
    assert env.agent.poll() is None


def test_waiting_peers_are_bounded_and_still_converge(world, pyz: Path) -> None:
    """300 addresses handed on from unlisted peers to new ones, 100 peers a page: at most
    200 wait for the end of the list, the other 100 come with a second full list."""
    env, cp, _ = world
    addresses = [[f"10.98.{n // 250}.{n % 250 + 1}/32"] for n in range(300)]
    old = {random_key(): ips for ips in addresses}
    cp.set_peers(CLIENT | old)
    start_agent(env, pyz)
    eventually(lambda: len(env.dump()) == 301, what="the old peers")
    new = {random_key(): ips for ips in addresses}
    cp.paged = True
    cp.set_peers(CLIENT | new)
    eventually(lambda: set(env.dump()) == set(CLIENT | new), what="the new peers")
    assert cp.starts == 2, "a second full list for the peers past the bound"
    assert "100 listed peers left for the next full sync" in env.log.read_text()
    assert (
        env.metric("idra_agent_peers_rejected_total", 'reason="allowed IP owned by another peer"')
        == 0
    )
