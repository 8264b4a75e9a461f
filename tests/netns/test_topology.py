"""The namespace helper removes everything it made, also when the test fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from idra.netns import Topology, netns_names, unique_name


def test_everything_removed_after_a_failure() -> None:
    ifname = unique_name("wgt")
    with pytest.raises(RuntimeError, match="boom"), Topology("cleanup") as topo:
        a, b = topo.netns("a"), topo.netns("b")
        topo.link(a, "eth0", b, "eth0")
        proc = topo.wireguard(a, ifname)
        names = [a.name, b.name]
        raise RuntimeError("boom")
    assert proc.poll() is not None
    assert not set(names) & set(netns_names())
    assert not Path(f"/var/run/wireguard/{ifname}.sock").exists()
