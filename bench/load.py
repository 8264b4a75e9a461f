"""Control-plane load: 1,000 simulated nodes heartbeating every 10 s against the real
``idra controlplane serve`` (paced, like a fleet), then as fast as 32 workers can
(saturation), then the latency of peers-delta requests. Loopback inside a namespace;
the load generator shares the machine's 2 cores with the server."""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ControlPlane, inside
from bench.keys import random_key
from idra.netns import Topology

BODY = {
    "state": "active",
    "peers_version": 0,
    "stats": {"load1": 0.2, "cpu_pct": 3.0, "mem_pct": 20.0, "rx_bytes": 1, "tx_bytes": 1,
              "rx_bps": 0.0, "tx_bps": 0.0, "peers": 0, "active_peers": 0},
    "integrity": {"nftables_sha256": "a" * 64, "sysctl_ok": True, "agent_sha256": "b" * 64},
}  # fmt: skip


def _percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100)
    return {"p50_ms": 1000 * cuts[49], "p99_ms": 1000 * cuts[98], "max_ms": 1000 * max(values)}


async def _load(plane: ControlPlane, nodes: int, paced_s: float, interval: float) -> dict:
    headers = {"Authorization": f"Bearer {plane.token('node')}"}
    # Idle connections expire before uvicorn's 5 s keep-alive, so none is reused as it closes.
    limits = httpx.Limits(max_connections=nodes, keepalive_expiry=4)
    async with httpx.AsyncClient(
        base_url=plane.url, headers=headers, limits=limits, timeout=30
    ) as client:
        gate = asyncio.Semaphore(50)

        async def register(index: int) -> str:
            body = {"identity": plane.identity(f"i-load{index}"),
                    "public_ip": f"192.0.2.{index % 250 + 1}", "public_key": random_key(),
                    "listen_port": 51820, "agent_version": "bench"}  # fmt: skip
            async with gate:
                reply = await client.post("/v1/nodes", json=body)
            reply.raise_for_status()
            plane.credentials[reply.json()["node_id"]] = reply.json()["node_credential"]
            return reply.json()["node_id"]

        def own(node_id: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {plane.credentials[node_id]}"}

        ids = await asyncio.gather(*(register(i) for i in range(nodes)))
        loop = asyncio.get_running_loop()
        paced: list[float] = []
        errors = 0

        async def heartbeat(node_id: str) -> float:
            nonlocal errors
            started = time.perf_counter()
            reply = await client.post(
                f"/v1/nodes/{node_id}/heartbeat", json=BODY, headers=own(node_id)
            )
            errors += reply.status_code != 200
            return time.perf_counter() - started

        async def node(node_id: str, start: float) -> None:
            due = start + random.uniform(0, interval)  # noqa: S311 - spread, not secrets
            while due < start + paced_s:
                await asyncio.sleep(max(0.0, due - loop.time()))
                paced.append(await heartbeat(node_id))
                due += interval

        start = loop.time()
        await asyncio.gather(*(node(i, start) for i in ids))
        paced_rate = len(paced) / paced_s

        saturated: list[float] = []
        until = loop.time() + 10

        async def worker(offset: int) -> None:
            index = offset
            while loop.time() < until:
                saturated.append(await heartbeat(ids[index % nodes]))
                index += 32

        await asyncio.gather(*(worker(i) for i in range(32)))

        # Peers delta: one client joins; its node asks for what changed since before.
        version = (await client.get(f"/v1/nodes/{ids[0]}/peers", headers=own(ids[0]))).json()[
            "version"
        ]
        reply = await client.post(
            "/v1/peers", json={"public_key": random_key()},
            headers={"Authorization": f"Bearer {plane.token('client')}"},
        )  # fmt: skip
        reply.raise_for_status()
        target = reply.json()["node_id"]
        delta: list[float] = []
        for _ in range(300):
            started = time.perf_counter()
            body = (
                await client.get(
                    f"/v1/nodes/{target}/peers", params={"since": version}, headers=own(target)
                )
            ).json()
            delta.append(time.perf_counter() - started)
            if body["full"] or len(body["peers"]) != 1:
                raise RuntimeError("peers delta did not hold exactly the one change")
    return {
        "nodes": nodes,
        "paced": {"requests": len(paced), "per_s": paced_rate, **_percentiles(paced)},
        "saturated": {
            "requests": len(saturated),
            "per_s": len(saturated) / 10,
            **_percentiles(saturated),
        },
        "delta": _percentiles(delta),
        "errors": errors,
    }


def run_load(nodes: int = 1000, paced_s: float = 40, interval: float = 10) -> dict:
    with Topology("bload") as topo, tempfile.TemporaryDirectory() as workdir:
        plane = ControlPlane.start(topo, topo.netns("cp"), Path(workdir), interval=int(interval))
        with inside(plane.ns):
            return asyncio.run(_load(plane, nodes, paced_s, interval))


if __name__ == "__main__":
    import json

    print(json.dumps(run_load(nodes=200, paced_s=10), indent=1))
