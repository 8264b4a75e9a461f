"""The lab's fleet backend for ``idra reap --fleet lab``: terminate a node the way the
auto-scaling group would, then launch its replacement (new address, new key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from idra.config import load_stack
from idra.lab import world
from idra.lab.state import LabState


class LabFleet:
    def check(self, node: dict[str, Any]) -> str | None:
        """Every lab node is the lab's own (no foreign instances in the lab)."""
        return None

    def terminate(self, node: dict[str, Any]) -> str:
        state = LabState.load()
        if state is None:
            raise RuntimeError("no lab is up")
        victim = next((n for n in state.nodes if n.instance_id == node["instance_id"]), None)
        if victim is None:
            return "already gone"
        world.remove_node(state, victim)
        replacement = world.add_node(state, load_stack(state.stack), Path(state.agent))
        return f"terminated; replaced by node{replacement.index} ({replacement.public_v4})"
