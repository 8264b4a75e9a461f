"""Where the agent's memory goes at a given peer count, step by step in a fresh process:
the agent's imports, then the state it keeps (peers and the address → owner index, its
compact table) after a full list applied page by page as the agent does. Resident memory
(RSS) after each step, and the Python heap still held (tracemalloc) at the end, since
CPython keeps freed memory mapped.

    python -m bench.memory_profile 100000 [--heap]      (prints JSON: MiB after each step)
"""

from __future__ import annotations

import gc
import ipaddress
import json
import sys
import tracemalloc
from pathlib import Path

from bench.keys import random_key


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def profile(count: int, heap: bool = False) -> dict[str, float]:
    steps = {"python": rss_mb()}
    import bench.as_packaged  # noqa: F401 - the packaged agent's imports (no rich)
    import node_daemon.cli  # noqa: F401 - the agent's own imports, as `node-daemon run`
    from node_daemon.api import NodeApi  # noqa: F401
    from node_daemon.daemon import Agent  # noqa: F401
    from node_daemon.peers import plan
    from node_daemon.state import PeerTable
    from node_daemon.sync import PAGE

    steps["agent imports"] = rss_mb()
    if heap:  # tracing inflates RSS: heap figures come from a separate run
        tracemalloc.start()
    v4 = ipaddress.IPv4Network("10.96.0.0/12")
    v6 = ipaddress.IPv6Network("fd49:4452:4100::/64")
    live, peak = PeerTable(), 0.0
    for first in range(0, count, PAGE):  # the full list as the agent gets it: in pages
        body = json.dumps({"version": 1, "full": True, "removed": [], "peers": [
            {"public_key": random_key(), "allowed_ips": [
                f"{v4.network_address + i + 2}/32", f"{v6.network_address + i + 2}/128"]}
            for i in range(first, min(count, first + PAGE))]}).encode()  # fmt: skip
        reply = json.loads(body)
        result = plan(reply["peers"], [], live, [v4, v6], full=False, owners=live.owners)
        for key, ips in result.upserts.items():
            live.put(key, ips)
        peak = max(peak, rss_mb())
        del body, reply, result
    gc.collect()
    steps["state kept (paged full sync)"] = rss_mb()
    if heap:
        return {"heap kept": tracemalloc.get_traced_memory()[0] / 2**20}
    assert len(live) == count and len(live.owners) == 2 * count  # noqa: S101 - sanity
    return steps


if __name__ == "__main__":
    print(json.dumps(profile(int(sys.argv[1]), heap="--heap" in sys.argv)))
