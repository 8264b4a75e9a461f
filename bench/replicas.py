"""SQLite and PostgreSQL side by side (issue 24): paced heartbeats of 1,000 nodes, the
saturation with one and with two replicas, the time a user waits to connect when the
peer is added through one replica and the node long-polls another, and the cost of a
long-poll wake. Everything on one namespace's loopback; the PostgreSQL cluster is a
throwaway one (idra/lab/postgres.py) with its default durability (fsync on)."""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ControlPlane, cpu_seconds, inside
from bench.keys import random_key
from bench.load import BODY, _percentiles
from idra.lab.postgres import Cluster
from idra.netns import Topology

SATURATE_S = 10
WORKERS = 32
KEEP = 4  # nodes left active for the connect test (the others are drained)


async def _measure(planes: list[ControlPlane], nodes: int, paced_s: float, interval: float,
                   connects: int) -> dict:  # fmt: skip
    first, last = planes[0], planes[-1]
    limits = httpx.Limits(max_connections=nodes + 64, keepalive_expiry=4)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        gate = asyncio.Semaphore(50)
        token = {"Authorization": f"Bearer {first.token('node')}"}

        def own(node_id: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {first.credentials[node_id]}"}

        async def register(index: int) -> str:
            body = {"identity": first.identity(f"i-rep{index}"),
                    "public_ip": f"192.0.2.{index % 250 + 1}", "public_key": random_key(),
                    "listen_port": 51820, "agent_version": "bench"}  # fmt: skip
            async with gate:
                reply = await client.post(f"{first.url}/v1/nodes", json=body, headers=token)
            reply.raise_for_status()
            first.credentials[reply.json()["node_id"]] = reply.json()["node_credential"]
            return reply.json()["node_id"]

        ids = await asyncio.gather(*(register(i) for i in range(nodes)))
        loop = asyncio.get_running_loop()
        errors = 0

        async def heartbeat(plane: ControlPlane, node_id: str) -> float:
            nonlocal errors
            started = time.perf_counter()
            reply = await client.post(f"{plane.url}/v1/nodes/{node_id}/heartbeat", json=BODY,
                                      headers=own(node_id))  # fmt: skip
            errors += reply.status_code != 200
            return time.perf_counter() - started

        paced: list[float] = []

        async def node(node_id: str, start: float) -> None:
            due = start + random.uniform(0, interval)  # noqa: S311 - spread, not secrets
            while due < start + paced_s:
                await asyncio.sleep(max(0.0, due - loop.time()))
                paced.append(await heartbeat(first, node_id))
                due += interval

        start = loop.time()
        await asyncio.gather(*(node(i, start) for i in ids))

        async def saturate(targets: list[ControlPlane]) -> dict:
            took: list[float] = []
            until = loop.time() + SATURATE_S

            async def worker(offset: int) -> None:
                index = offset
                while loop.time() < until:
                    took.append(await heartbeat(targets[offset % len(targets)], ids[index % nodes]))
                    index += WORKERS

            await asyncio.gather(*(worker(i) for i in range(WORKERS)))
            return {"per_s": len(took) / SATURATE_S, **_percentiles(took)}

        one = await saturate([first])
        two = await saturate(planes) if len(planes) > 1 else None

        # Connect: a few active nodes long-poll the last replica; a peer is added
        # through the first; the wait ends when its node's long-poll answers with it.
        operator = {"Authorization": f"Bearer {first.token('operator')}"}
        for node_id in ids[KEEP:]:
            async with gate:
                reply = await client.post(f"{first.url}/node/drain", headers=operator,
                                          json={"id": node_id, "reason": "manual"})  # fmt: skip
            reply.raise_for_status()
        kept = ids[:KEEP]
        await asyncio.gather(*(heartbeat(first, n) for n in kept))

        async def version(node_id: str) -> int:
            reply = await client.get(f"{last.url}/v1/nodes/{node_id}/peers", headers=own(node_id))
            return reply.json()["version"]

        async def hold(node_id: str, since: int) -> tuple[float, dict]:
            params = {"since": since, "wait": 30}
            url = f"{last.url}/v1/nodes/{node_id}/peers"
            reply = await client.get(url, params=params, headers=own(node_id))
            return time.perf_counter(), reply.json()

        held = {n: asyncio.create_task(hold(n, await version(n))) for n in kept}
        await asyncio.sleep(0.3)
        connect, wake = [], []
        client_token = {"Authorization": f"Bearer {first.token('client')}"}
        for _ in range(connects):
            key = random_key()
            started = time.perf_counter()
            reply = await client.post(f"{first.url}/v1/peers", json={"public_key": key},
                                      headers=client_token)  # fmt: skip
            answered = time.perf_counter()
            reply.raise_for_status()
            target = reply.json()["node_id"]
            done, body = await asyncio.wait_for(held[target], 10)
            if key not in {p["public_key"] for p in body["peers"]}:
                raise RuntimeError("the woken long-poll did not carry the new peer")
            connect.append(done - started)
            wake.append(done - answered)
            held[target] = asyncio.create_task(hold(target, body["version"]))
            await asyncio.sleep(0.05)
        for task in held.values():
            task.cancel()
    return {
        "paced": {"requests": len(paced), **_percentiles(paced)},
        "one": one,
        "two": two,
        "connect": _percentiles(connect),
        "wake": _percentiles(wake),
        "errors": errors,
    }


def run_backend(backend: str, nodes: int, paced_s: float, interval: float, connects: int) -> dict:
    with Topology("brep") as topo, tempfile.TemporaryDirectory() as workdir:
        ns = topo.netns("cp")
        cluster, url = None, None
        try:
            if backend == "postgresql":
                cluster = Cluster(Path(tempfile.mkdtemp(prefix="idra-bench-pg-")),
                                  prefix=("ip", "netns", "exec", ns.name))  # fmt: skip
                cluster.create()
                cluster.start()
                url = cluster.url()
            first = ControlPlane.start(topo, ns, Path(workdir), int(interval), url)
            planes = [first]
            if url:
                planes.append(ControlPlane.start(topo, ns, Path(workdir), int(interval), url,
                                                 port=8081, like=first))  # fmt: skip
            load = os.getloadavg()[0]  # what else this machine was doing
            pids = [p.pid for p in topo.processes]
            cpu = sum(cpu_seconds(pid) for pid in pids)
            with inside(ns):
                result = asyncio.run(_measure(planes, nodes, paced_s, interval, connects))
            result["server_cpu_s"] = sum(cpu_seconds(pid) for pid in pids) - cpu
            result["load_before"] = load
            return result
        finally:
            if cluster:
                cluster.remove()


def run_replicas(nodes: int = 1000, paced_s: float = 30, interval: float = 10,
                 connects: int = 100) -> dict:  # fmt: skip
    return {b: run_backend(b, nodes, paced_s, interval, connects)
            for b in ("sqlite", "postgresql")}  # fmt: skip


HEADING = "## 9. Control plane replicas: SQLite and PostgreSQL"


def section(quick: bool) -> str:
    """Run it; the markdown section (goals stated, nothing gated)."""
    from bench.run import table

    nodes = 200 if quick else 1000
    r = run_replicas(nodes=nodes, paced_s=15 if quick else 30, connects=30 if quick else 100)
    sq, pg = r["sqlite"], r["postgresql"]

    def row(label: str, key: str, field: str) -> list[object]:
        cell = [label]
        for result in (sq, pg):
            part = result.get(key)
            cell.append(part[field] if part else "n/a (one writer)")
        return cell

    ratio = sq["one"]["per_s"] / pg["one"]["per_s"]
    connect = pg["connect"]["p99_ms"]
    return "\n".join(
        [
            HEADING,
            "",
            f"`python -m bench.replicas` (also part of `bench.run`). {nodes:,} simulated nodes on "
            "one namespace's loopback; the load generator, the replicas and PostgreSQL (a "
            "throwaway cluster, default durability: fsync on) share the machine's 2 cores. "
            "SQLite is one process (its one writer); PostgreSQL runs two replicas of "
            "`idra controlplane serve`. *Connect*: a node long-polls replica B, a client's "
            "`POST /v1/peers` goes to replica A, the wait ends when B answers the node with the "
            "peer; *wake*: from A's answer to B's (NOTIFY, LISTEN, the long-poll re-reading; "
            "on SQLite the long-poll is woken in-process before the POST's answer is sent, "
            "so it can be negative). The machine's load average before each run: "
            f"{sq['load_before']:.1f} (SQLite), {pg['load_before']:.1f} (PostgreSQL)"
            + (
                " — other work shared the cores."
                if max(sq["load_before"], pg["load_before"]) > 1.5
                else " — a quiet machine."
            ),
            "",
            table(
                ["measure", "SQLite", "PostgreSQL"],
                [
                    row("paced heartbeats p50 ms (10 s interval)", "paced", "p50_ms"),
                    row("paced heartbeats p99 ms", "paced", "p99_ms"),
                    row("saturation, one replica, heartbeats/s", "one", "per_s"),
                    row("saturation, one replica, p99 ms", "one", "p99_ms"),
                    row("saturation, two replicas, heartbeats/s", "two", "per_s"),
                    row("connect p50 ms (across replicas on PostgreSQL)", "connect", "p50_ms"),
                    row("connect p99 ms", "connect", "p99_ms"),
                    row("long-poll wake p50 ms", "wake", "p50_ms"),
                    row("long-poll wake p99 ms", "wake", "p99_ms"),
                    ["server CPU seconds (whole run)", sq["server_cpu_s"], pg["server_cpu_s"]],
                ],
            ),
            "",
            f"Goals: connect p99 across replicas < 1 s: **{connect:.0f} ms** "
            f"({'met' if connect < 1000 else 'missed'}); heartbeat p99 at {nodes:,} nodes < 50 ms: "
            f"SQLite {sq['paced']['p99_ms']:.0f} ms, PostgreSQL {pg['paced']['p99_ms']:.0f} ms; "
            f"PostgreSQL's saturation within 2x of SQLite's: SQLite/PostgreSQL = {ratio:.2f} "
            f"({'met' if ratio <= 2 else 'missed'}). Errors: {sq['errors'] + pg['errors']}.",
        ]
    )


def write(quick: bool) -> None:
    """Run the section and put it into docs/benchmarks.md (replacing its last run)."""
    from bench.run import DOC

    text = section(quick)
    doc = DOC.read_text()
    if HEADING in doc:
        before, after = doc.split(HEADING, 1)
        rest = after.split("\n## ", 1)
        doc = before + text + ("\n\n## " + rest[1] if len(rest) == 2 else "\n")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc)
    print(text)


if __name__ == "__main__":
    import sys

    write("--quick" in sys.argv)
