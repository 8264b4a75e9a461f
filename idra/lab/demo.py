"""``idra lab demo``: the fleet story with real traffic, step by step; exit 0 only if
every step held.

1. every client reaches the internet through its node, v4 and v6, seen as the node;
2. no client reaches the metadata service, the VPC or another client;
3. a client joins and leaves while the others ping on: no loss;
4. a stolen node token cannot touch another node: with node 1's NODE_TOKEN, node
   credential and signed identity document, every attack on node 2 is refused;
5. the streaming service refuses node 1's address → the lab's lifecycle service (``idra
   ops run --fleet lab``, running since ``lab up``): its canary, probing through its own
   tunnel to every node, drains it (on its second pass) → its clients move to healthy
   nodes → its reaper replaces it;
6. one node's address gets listed (DNSBL) → the same story → the pool is whole again.
The demo only changes the world (a listing) and watches the loop's log and the control
plane, bounded: nothing in these steps runs the canary or the reaper itself.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.table import Table

from idra.config import load_stack
from idra.lab import state as S
from idra.lab import world
from idra.lab.state import Client, LabState
from idra.netns import Netns, is_running


@dataclass
class Step:
    name: str
    ok: bool
    detail: str


def _fetch(client: Client, host: str, timeout: float = 3) -> str | None:
    url = f"http://[{host}]:{S.WEB_PORT}/" if ":" in host else f"http://{host}:{S.WEB_PORT}/"
    result = Netns(client.ns).run(
        "curl", "-gsS", "--max-time", str(timeout), url, check=False, timeout=timeout + 5
    )
    return result.stdout.strip() if result.returncode == 0 else None


def internet_through_the_node(state: LabState) -> Step:
    """Every client reaches the internet through its node, v4 and v6."""
    nodes = {n.node_id: n for n in state.nodes}
    wrong = []
    for client in state.clients:
        node = nodes[client.node_id]
        for target, expected in ((S.PUBLIC_V4, node.public_v4), (S.PUBLIC_V6, node.public_v6)):
            seen = _fetch(client, target)
            if seen != expected:
                wrong.append(f"client{client.index} → {target}: seen as {seen}")
    return Step(
        "clients reach the internet via their node (v4, v6)",
        not wrong,
        "; ".join(wrong) or f"{len(state.clients)} clients, each seen as its node",
    )


def isolation(state: LabState) -> Step:
    """No client reaches the metadata service, the VPC or another client."""
    leaks = []
    for client in state.clients:
        others = [c.address_v4 for c in state.clients if c is not client]
        for target in (S.METADATA_V4, S.PRIVATE_V4, *others):
            if _fetch(client, target, timeout=1.5) is not None:
                leaks.append(f"client{client.index} reached {target}")
    return Step(
        "no client reaches metadata, VPC or another client",
        not leaks,
        "; ".join(leaks) or "169.254.169.254, 10.20.0.5 and peers all dropped",
    )


def join_and_leave(state: LabState) -> Step:
    """A client joins and leaves while another pings on."""
    watcher = state.clients[0]
    ping = subprocess.Popen(
        Netns(watcher.ns).exec_args("ping", "-n", "-q", "-i", "0.05", "-c", "120", S.PUBLIC_V4),
        stdout=subprocess.PIPE,
        text=True,
    )
    with world.api_client(state, "client") as api:
        newcomer = world.add_client(state, api)
        latency = _first_ping(newcomer)
        world.remove_client(state, newcomer, api)
    out, _ = ping.communicate(timeout=30)
    summary = next((line for line in out.splitlines() if "received" in line), "")
    received = int(summary.split(",")[1].split()[0]) if summary else 0
    ok = latency is not None and received == 120
    connected = f"first ping answered in {latency:.2f} s" if latency is not None else "no answer"
    return Step(
        "a client joins and leaves; the others lose nothing",
        ok,
        f"newcomer: {connected} (from its POST /v1/peers); watcher: {received}/120 pings answered",
    )


def _first_ping(client: Client, limit: float = 20) -> float | None:
    """Seconds from the assignment until the client's first ping is answered (connect
    latency: the peer reached its node, the handshake, the round trip)."""
    host = Netns(client.ns)
    while time.monotonic() - client.assigned_at < limit:
        probe = host.run("ping", "-n", "-c", "1", "-W", "0.2", S.PUBLIC_V4, check=False)
        if probe.returncode == 0:
            return time.monotonic() - client.assigned_at
    return None


def stolen_token_harmless(state: LabState) -> Step:
    """A stolen node token cannot touch another node."""
    from idra.lab.pki import IdentitySigner

    thief, victim = state.nodes[0], state.nodes[1]
    loot = S.LAB_DIR / f"node{thief.index}"  # what root on node 1 can read
    token = (S.LAB_DIR / "node-token").read_text().strip()
    credential = (loot / "node.credential").read_text().strip()
    document, signature = (loot / "identity.json").read_text(), (loot / "identity.sig").read_text()
    claims = json.loads(document)

    def signed_as(instance_id: str, sig: str = signature) -> dict:
        forged = json.dumps(claims | {"instanceId": instance_id}, indent=2)
        return {"document": forged, "signature": sig}

    def register(identity: dict, **change) -> int:
        body = {"identity": identity, "public_ip": thief.public_v4, "listen_port": 51820,
                "public_key": _thief_key(), "agent_version": "evil"} | change  # fmt: skip
        headers = {"Authorization": f"Bearer {token}", "X-Node-Credential": credential}
        return http.post("/v1/nodes", json=body, headers=headers).status_code

    invented = IdentitySigner.document(region=state.region)
    self_signed = {"document": invented, "signature": IdentitySigner().sign(invented)}
    sick = {"state": "active", "peers_version": 0, "stats": dict.fromkeys(_STATS, 0),
            "integrity": {"nftables_sha256": "0" * 64, "sysctl_ok": False,
                          "agent_sha256": "0" * 64}}  # fmt: skip
    verify = ssl.create_default_context(cafile=S.LAB_DIR / "pki" / "ca.pem")
    with httpx.Client(base_url=state.api_url, verify=verify, timeout=10) as http, \
            world.api_client(state, "operator") as ops:  # fmt: skip
        before = _fleet_view(ops)
        victim_row = next(n for n in before if n[0] == victim.node_id)
        attempts = {}
        for name, secret in (("token", token), ("credential", credential)):
            auth = {"Authorization": f"Bearer {secret}"}
            attempts[f"(a) read node 2's peers with the {name}"] = http.get(
                f"/v1/nodes/{victim.node_id}/peers", headers=auth
            ).status_code
            attempts[f"(d) heartbeat node 2 as compromised with the {name}"] = http.post(
                f"/v1/nodes/{victim.node_id}/heartbeat", json=sick, headers=auth
            ).status_code
        attempts["(b) re-register node 2's instance (document altered)"] = register(
            signed_as(victim.instance_id)
        )
        attempts["(b) take over node 2's WireGuard key"] = register(
            {"document": document, "signature": signature}, public_key=_wg_key_of(victim)
        )
        attempts["(c) invent an instance (altered document)"] = register(
            signed_as("i-0123456789abcdef0")
        )
        attempts["(c) invent an instance (self-signed)"] = register(self_signed)
        attempts["(e) register an unrelated instance"] = register(signed_as("i-0feedfacecafe0001"))
        after = _fleet_view(ops)
    refused = {name: code for name, code in attempts.items() if code in (401, 403, 409)}
    unchanged = before == after and victim_row[3] == "active"
    ok = len(refused) == len(attempts) and unchanged
    return Step(
        "a stolen node token cannot touch another node",
        ok,
        f"{len(refused)}/{len(attempts)} attacks refused "
        f"({', '.join(sorted({str(c) for c in refused.values()}))}); node 2 and the pool "
        + ("unchanged" if unchanged else "CHANGED")
        + "".join(f"; {n}: HTTP {c}" for n, c in attempts.items() if n not in refused),
    )


_STATS = ("load1", "cpu_pct", "mem_pct", "rx_bytes", "tx_bytes", "rx_bps", "tx_bps", "peers",
          "active_peers")  # fmt: skip


def _fleet_view(ops) -> list[tuple]:
    """What an attack on node 2 would change: ids, instances, addresses, states."""
    nodes = ops.get("/v1/nodes").json()["nodes"]
    return sorted((n["id"], n["instance_id"], n["public_ip"], n["state"]) for n in nodes)


def _thief_key() -> str:
    from idra.netns import wg_keypair

    return wg_keypair()[1]


def _wg_key_of(node) -> str:
    """Node 2's public WireGuard key (public: every client of it knows it)."""
    return Netns(node.ns).run("wg", "show", node.wg, "public-key").stdout.strip()


OPS_LOG = "ops.log"
LOOP_WAIT_S = 90  # the lab's ops loop passes every 2 s: a drain or a replacement is seconds


def streaming_refuses_node(state: LabState) -> Step:
    """The streaming service refuses a node: the ops loop's canary, probing through its own
    tunnel to every node, drains it; its clients move; the loop's reaper replaces it."""
    return _replaced(state, state.nodes[0], "refused.json", "refused", "streaming",
                     "refused node drained through its tunnel, emptied, replaced")  # fmt: skip


def blocked_node_replaced(state: LabState) -> Step:
    """A node's address is listed: the ops loop's canary drains it, clients move, its
    reaper replaces it."""
    return _replaced(state, state.nodes[0], "listed.json", "listed", S.DNSBL_ZONE,
                     "listed node drained, emptied, replaced")  # fmt: skip


def _ops_passes(since: int, kind: str) -> list[str]:
    """The summaries of the ops loop's ``kind`` passes logged after byte ``since``."""
    text = (S.LAB_DIR / "logs" / OPS_LOG).read_bytes()[since:].decode(errors="replace")
    return re.findall(rf"ops {kind} pass: (.*)", text)


def _replaced(state: LabState, victim, where: str, how: str, check: str,
              name: str) -> Step:  # fmt: skip
    """``victim``'s address goes into the lab file ``where``; nothing else is done to
    the fleet: the running ops loop drains it (on its second listing pass, and only it),
    its clients move, the loop's reaper replaces it."""
    if not any(p.role == "ops" and is_running(p.pid) for p in state.processes):
        return Step(name, False, "the lab's lifecycle service (idra ops run --fleet lab) is "
                    "not running: nothing drains (idra lab down, then up)")  # fmt: skip
    mark = (S.LAB_DIR / "logs" / OPS_LOG).stat().st_size
    (S.LAB_DIR / where).write_text(json.dumps({victim.public_v4: how}))
    with world.api_client(state, "operator") as ops:
        drained = _eventually(lambda: _states(ops).get(victim.instance_id) == "draining",
                              LOOP_WAIT_S)  # fmt: skip
        (S.LAB_DIR / where).write_text("{}")
        states = _states(ops)
        others = [states.get(n.instance_id) for n in state.nodes if n is not victim]
        listed = [line for line in _ops_passes(mark, "canary") if f"({check} 1)" in line]
        only = (drained and others and all(s == "active" for s in others)
                and len(listed) >= 2 and " 0 drained" in listed[0]
                and listed[1].startswith(f"{len(state.nodes)} active, 1 listed")
                and ", 1 drained" in listed[1])  # fmt: skip
        state.__dict__.update(LabState.load().__dict__)
        moved = [c for c in state.clients if c.node_id == victim.node_id]
        with world.api_client(state, "client") as api:
            for client in moved:  # as a client app does when its node goes
                world.connect(state, client, api)

        def replaced() -> bool:  # by the loop's reaper (its line ends the pass)
            now = LabState.load()
            return (
                victim.instance_id not in {n.instance_id for n in now.nodes}
                and any(" 1 terminating" in line for line in _ops_passes(mark, "reaper"))
                and len(world.active_nodes(ops)) == len(now.nodes)
            )

        reaped = _eventually(replaced, LOOP_WAIT_S)
        state.__dict__.update(LabState.load().__dict__)
        world.learn_node_ids(state, ops)
    # a moved client's first handshake may precede its peer on the new node: WireGuard
    # retries after 5 s
    reachable = _eventually(lambda: all(_fetch(c, S.PUBLIC_V4) for c in state.clients), 20)
    ok = only and reaped and reachable
    return Step(
        name,
        ok,
        f"ops loop: drained on its 2nd listing pass ({check}; only it): {only}; "
        f"{len(moved)} clients moved; replaced by its reaper: {reaped}; "
        f"clients online: {reachable}",
    )


def _states(ops) -> dict[str, str]:
    """Instance id → state of every node the control plane knows."""
    return {n["instance_id"]: n["state"] for n in ops.get("/v1/nodes").json()["nodes"]}


def _eventually(condition: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1)
    return False


STORY = [
    internet_through_the_node,
    isolation,
    join_and_leave,
    stolen_token_harmless,
    streaming_refuses_node,
    blocked_node_replaced,
]


def run_demo(keep: bool, console: Console) -> int:
    state = LabState.load()
    if state is None or state.status != "up":
        console.print("no lab up: bringing one up (2 nodes, 3 clients)")
        world.teardown(state)
        state = world.bring_up(load_stack("staging"), 2, 3, world.default_agent(), console)
    world.enter_ops()
    with world.api_client(state, "operator") as ops:
        world.learn_node_ids(state, ops)
    steps = []
    for chapter in STORY:
        console.print(f"[bold]{chapter.__doc__ or chapter.__name__}[/bold]")
        step = chapter(state)
        console.print(("[green]✓[/green] " if step.ok else "[red]✗[/red] ") + step.detail)
        steps.append(step)
    table = Table("step", "result", "detail", title="IDRA lab demo")
    for step in steps:
        table.add_row(
            step.name, "[green]held[/green]" if step.ok else "[red]FAILED[/red]", step.detail
        )
    Console().print(table)
    if not all(step.ok for step in steps):
        console.print(f"logs of this run kept in {world.keep_logs()}")
    if not keep:
        world.teardown(LabState.load())
    return 0 if all(step.ok for step in steps) else 1
