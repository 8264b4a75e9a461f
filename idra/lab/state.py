"""The running lab's state, kept under ``/run/idra-lab`` so that ``status``, ``down``,
``demo`` and the lab fleet backend work from any shell.

Every namespace the lab makes is named ``idralab-…`` and every tunnel interface
``ilab…``, so ``down`` also sweeps what a crashed ``up`` left without recording it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

LAB_DIR = Path(os.environ.get("IDRA_LAB_DIR", "/run/idra-lab"))
NS_PREFIX = "idralab-"
WG_PREFIX = "ilab"

# The lab's "internet": one bridged segment in the router namespace, documentation ranges.
SEGMENT_V4, SEGMENT_V6 = "203.0.113.0/24", "2001:db8:1::/64"
ROUTER_V4, ROUTER_V6 = "203.0.113.1", "2001:db8:1::1"
ROUTER_MAC = "00:00:5e:00:53:01"  # fixed: see world.build_world
CP_V4, SVC_V4, OPS_V4 = "203.0.113.2", "203.0.113.3", "203.0.113.4"
PUBLIC_V4, PUBLIC_V6 = "198.51.100.80", "2001:db8:80::80"  # a web server "out there"
METADATA_V4, PRIVATE_V4 = "169.254.169.254", "10.20.0.5"
CP_PORT, STREAMING_PORT, WEB_PORT = 8443, 8080, 80
DNSBL_ZONE = "zen.spamhaus.org"  # served by the lab's own DNS server, never the real one


def node_addresses(index: int) -> tuple[str, str]:
    return f"203.0.113.{10 + index}", f"2001:db8:1::{10 + index:x}"


def client_addresses(index: int) -> tuple[str, str]:
    return f"203.0.113.{100 + index}", f"2001:db8:1::{100 + index:x}"


@dataclass
class Process:
    role: str
    pid: int
    log: str


@dataclass
class Node:
    index: int
    ns: str
    wg: str
    instance_id: str
    public_v4: str
    public_v6: str
    supervisor_pid: int = 0
    wireguard_pid: int = 0
    imds_pid: int = 0
    node_id: str = ""  # the control plane's, once registered


@dataclass
class Client:
    index: int
    ns: str
    wg: str
    public_key: str
    node_id: str = ""  # the node the control plane placed it on
    address_v4: str = ""
    address_v6: str = ""
    wireguard_pid: int = 0
    assigned_at: float = 0.0  # time.monotonic() of its last POST /v1/peers reply


@dataclass
class LabState:
    status: str = "building"  # building → up
    stack: str = "staging"
    region: str = ""
    agent: str = ""  # the node-daemon.pyz every lab node runs
    namespaces: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)
    next_node: int = 1
    replicas: int = 1  # > 1: control planes on PostgreSQL behind HAProxy (one URL)
    postgres: str = ""  # with replicas: the database cluster's folder

    @property
    def api_url(self) -> str:
        return f"https://{CP_V4}:{CP_PORT}"

    def save(self) -> None:
        LAB_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state.", dir=LAB_DIR)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self), handle, indent=1)
        Path(tmp).replace(LAB_DIR / "state.json")

    @classmethod
    def load(cls) -> LabState | None:
        try:
            data = json.loads((LAB_DIR / "state.json").read_text())
        except FileNotFoundError:
            return None
        return cls(
            **{k: v for k, v in data.items() if k not in ("processes", "nodes", "clients")},
            processes=[Process(**p) for p in data["processes"]],
            nodes=[Node(**n) for n in data["nodes"]],
            clients=[Client(**c) for c in data["clients"]],
        )
