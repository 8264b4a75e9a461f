"""Every rendered sysctl value is one the running kernel accepts.

Per-namespace keys are written inside a fresh namespace and read back. Host-wide keys
(absent or read-only in a namespace) are written on the host and restored at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from idra.config import load_stack
from idra.netns import Topology, parse_sysctl, run
from idra.render import render_node_files


@pytest.mark.parametrize("stack", ["staging", "production"])
def test_kernel_accepts_every_value(stack: str) -> None:
    text = render_node_files(load_stack(stack))["sysctl.conf"]
    settings = parse_sysctl(text)
    with Topology("sysctl") as topo:
        ns = topo.netns("fresh")
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
        host_wide = ns.load_sysctl(text)
        for key, value in settings.items():
            if key not in host_wide:
                assert ns.run("sysctl", "-n", key).stdout.split() == value.split(), key
    assert len(host_wide) < len(settings) / 2, "most keys must be per namespace"
    for key, value in host_wide.items():
        original = run(["sysctl", "-n", key]).stdout.strip()
        try:
            run(["sysctl", "-q", "-w", f"{key}={value}"])
            assert run(["sysctl", "-n", key]).stdout.split() == value.split(), key
        finally:
            run(["sysctl", "-q", "-w", f"{key}={original}"])


def test_udp_memory_below_physical_memory() -> None:
    page = 4096
    memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    for stack in ("staging", "production"):
        settings = parse_sysctl(render_node_files(load_stack(stack))["sysctl.conf"])
        pages = settings.get("net.ipv4.udp_mem", run(["sysctl", "-n", "net.ipv4.udp_mem"]).stdout)
        assert max(int(p) for p in pages.split()) * page < memory
        assert int(settings["net.core.rmem_max"]) < memory / 64
