"""The agent at work: a real control plane and the real ``node-daemon run`` in a
namespace. Per peer count: time and CPU of the initial full sync, bytes on the wire per
idle cycle (loopback counters: every packet both ways, TCP/IP headers included), CPU and
memory idle, and cost of a 1 % change. Beyond wireguard-go's 65,536 peers the same agent
runs with an in-memory interface (``bench.memory_agent``)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import ControlPlane, cpu_seconds, inside, interface_bytes, memory_mb
from bench.keys import random_key
from idra.config import REPO_ROOT
from idra.netns import Netns, Topology, unique_name

INTERVAL = 10  # the control plane's heartbeat interval, as in production


def _keys(count: int) -> list[str]:
    return [random_key() for _ in range(count)]


def _metrics(ns: Netns, port: int) -> dict[str, float]:
    with inside(ns):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        sample.name + "".join(f"/{v}" for v in sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _wait(ns: Netns, port: int, condition, timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            values = _metrics(ns, port)
            if condition(values):
                return values
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the agent did not get there in time")


def _full_list_bytes(plane: ControlPlane, node_id: str) -> int:
    with inside(plane.ns):
        reply = httpx.get(
            f"{plane.url}/v1/nodes/{node_id}/peers",
            headers={"Authorization": f"Bearer {plane.credentials[node_id]}"},
            timeout=60,
        )
    return len(reply.content) + sum(len(k) + len(v) + 4 for k, v in reply.headers.raw)


def measure(
    topo: Topology, plane: ControlPlane, size: int, in_memory: bool, idle_s: float, port: int
) -> dict[str, float]:
    ns, instance = plane.ns, f"i-bench{size}"
    ifname = unique_name("wga")
    if not in_memory:
        topo.wireguard(ns, ifname)
        # The node's tunnel addresses, as cloud-init sets them: the agent takes only the
        # part of the control plane's pool inside the interface's own prefixes.
        ns.addr(ifname, "10.96.0.1/12", "fd49:4452:4100::1/64")
    node_id = plane.register(instance, _keys(1)[0])
    keys = _keys(size)
    plane.add_peers(node_id, keys)
    command = [sys.executable, "-m", "bench.memory_agent" if in_memory else "bench.as_packaged"]
    state = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    imds_url = plane.start_imds(topo, node_id, instance, state)
    started = time.monotonic()
    agent = topo.spawn(
        ns, *command, "run", "--api-url", plane.url, "--token-file", str(plane.tokens["node"]),
        "--interface", ifname, "--imds-url", imds_url, "--state-dir", str(state),
        "--metrics-addr", f"127.0.0.1:{port}", "--sysctl-file", str(state / "none.conf"),
        cwd=REPO_ROOT, log=state / "agent.log",
    )  # fmt: skip
    _wait(ns, port, lambda m: m.get("idra_agent_peers") == size, timeout=600)
    full_sync_s = time.monotonic() - started
    full_sync_cpu = cpu_seconds(agent.pid)

    time.sleep(INTERVAL * 1.5)  # settle: past the first idle heartbeat
    before = _metrics(ns, port)
    cpu0, wire0, t0 = cpu_seconds(agent.pid), interface_bytes(ns), time.monotonic()
    time.sleep(idle_s)
    cpu1, wire1, t1 = cpu_seconds(agent.pid), interface_bytes(ns), time.monotonic()
    after = _metrics(ns, port)
    cycles = after["idra_agent_heartbeats_total"] - before["idra_agent_heartbeats_total"]
    idle_memory = memory_mb(agent.pid)

    change = max(2, size // 100) // 2
    removed, added = keys[:change], _keys(change)
    syncs = after["idra_agent_syncs_total/ok"]
    cpu2 = cpu_seconds(agent.pid)
    plane.remove_peers(node_id, removed)
    plane.add_peers(node_id, added)
    done = _wait(ns, port, lambda m: m["idra_agent_syncs_total/ok"] > syncs, timeout=60)
    sync_cpu = cpu_seconds(agent.pid) - cpu2
    sync_http = sum(
        done[f"idra_agent_api_bytes_total/{d}"] - after[f"idra_agent_api_bytes_total/{d}"]
        for d in ("sent", "received")
    )
    if done["idra_agent_peers"] != size:
        raise RuntimeError(f"agent holds {done['idra_agent_peers']} peers, not {size}")
    return {
        "peers": size,
        "interface": "memory" if in_memory else "wireguard-go",
        "full_sync_s": full_sync_s,
        "full_sync_cpu_s": full_sync_cpu,
        "full_list_bytes": _full_list_bytes(plane, node_id),
        "idle_cycle_bytes": (wire1 - wire0) / max(cycles, 1),
        "idle_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
        "idle_rss_mb": idle_memory["VmRSS"],
        "peak_rss_mb": memory_mb(agent.pid)["VmHWM"],
        "sync_changed": 2 * change,
        "sync_cpu_s": sync_cpu,
        "sync_http_bytes": sync_http,  # one heartbeat + the delta (HTTP, headers included)
    }


def run_agent(real_sizes: list[int], memory_sizes: list[int], idle_s: float) -> list[dict]:
    rows = []
    with Topology("bagent") as topo, tempfile.TemporaryDirectory() as workdir:
        plane = ControlPlane.start(topo, topo.netns("cp"), Path(workdir), interval=INTERVAL)
        sizes = [(s, False) for s in real_sizes] + [(s, True) for s in memory_sizes]
        for index, (size, in_memory) in enumerate(sizes):
            rows.append(measure(topo, plane, size, in_memory, idle_s, 9600 + index))
            for proc in topo.processes[1:]:  # keep the control plane, stop this agent
                proc.terminate()
                proc.wait(timeout=10)
            del topo.processes[1:]
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(run_agent([1_000], [2_000], idle_s=20), indent=1))
