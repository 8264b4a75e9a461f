"""Validation of the control plane's replies (Node API v1, ARCHITECTURE §3).

Small explicit checks (the zipapp carries pure-Python dependencies only, so no
pydantic-core): a reply of the wrong shape is a ``malformed`` fault, never a crash.
Single peers are checked later, one by one (:mod:`node_daemon.peers`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import Any

from node_daemon.bounded import Fault, sanitize

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NODE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.:-]{0,63}")
CREDENTIAL = re.compile(r"[\x21-\x7e]{16,512}")  # printable, no space: a header value
INTERVAL_MIN, INTERVAL_MAX = 1.0, 300.0
CANARY_MAX = 16  # addresses per family in the canary block (ARCHITECTURE: a /28, a /124)
CURSOR = re.compile(r"[0-9]{1,16}\.[0-9]{1,16}")


def _bad(what: str) -> Fault:
    return Fault("control_plane", "malformed", what)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(what)
    return value


@dataclass
class Registration:
    node_id: str
    credential: str | None  # this node's, for every later call (never logged); None: ours
    interval: float  # clamped to 1..300 s
    pools: list[Network]
    document: dict[str, Any]  # the whole reply (other fields, e.g. a node credential)
    canary: list[Network] = field(default_factory=list)  # empty: an older control plane


def registration(doc: dict[str, Any]) -> Registration:
    node_id = doc.get("node_id")
    if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
        raise _bad("register: node_id")
    credential = doc.get("node_credential")  # absent: the one we sent is bound
    if "node_credential" in doc and not (
        isinstance(credential, str) and CREDENTIAL.fullmatch(credential)
    ):
        raise _bad("register: node_credential")
    interval = doc.get("heartbeat_interval_s")
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise _bad("register: heartbeat_interval_s")
    if not math.isfinite(interval):
        raise _bad("register: heartbeat_interval_s")
    pools = _pair(doc.get("client_pool"), "client_pool")
    canary = doc.get("canary_pool")
    canary = [] if canary is None else _pair(canary, "canary_pool")
    if any(net.num_addresses > CANARY_MAX for net in canary):
        raise _bad("register: canary_pool larger than a /28 and a /124")
    clamped = min(max(float(interval), INTERVAL_MIN), INTERVAL_MAX)
    return Registration(node_id, credential, clamped, pools, doc, canary)


def _pair(pool: Any, what: str) -> list[Network]:
    """``{"ipv4": prefix, "ipv6": prefix}`` → the two networks."""
    if not isinstance(pool, dict):
        raise _bad(f"register: {what}")
    pools = []
    for family, version in (("ipv4", 4), ("ipv6", 6)):
        try:
            net = ipaddress.ip_network(pool.get(family), strict=True)
        except (TypeError, ValueError):
            raise _bad(f"register: {what}.{family}") from None
        if net.version != version:
            raise _bad(f"register: {what}.{family}")
        pools.append(net)
    return pools


@dataclass
class Peers:
    version: int
    full: bool
    peers: list[Any]  # entries checked one by one by peers.plan
    removed: list[Any]
    next_cursor: str | None = None  # a full list continues (paged, sync v2)


def peers(doc: dict[str, Any], max_peers: int) -> Peers:
    version = _int(doc.get("version"), "peers: version")
    full = doc.get("full")
    if not isinstance(full, bool):
        raise _bad("peers: full")
    listed, removed = doc.get("peers"), doc.get("removed", [])
    if not isinstance(listed, list) or not isinstance(removed, list):
        raise _bad("peers: peers/removed")
    if len(listed) + len(removed) > max_peers:
        raise Fault("control_plane", "oversized", f"peers: over {max_peers} peers")
    cursor = doc.get("next_cursor")
    if cursor is not None and not (isinstance(cursor, str) and CURSOR.fullmatch(cursor)):
        raise _bad("peers: next_cursor")
    return Peers(version, full, listed, removed, cursor if full else None)


@dataclass
class Beat:
    drain: bool
    drain_reason: str  # sanitised, for logs
    peers_version: int


def beat(doc: dict[str, Any]) -> Beat:
    drain = doc.get("drain")
    if not isinstance(drain, bool):
        raise _bad("heartbeat: drain")
    reason = doc.get("drain_reason")
    if reason is not None and not isinstance(reason, str):
        raise _bad("heartbeat: drain_reason")
    version = _int(doc.get("peers_version"), "heartbeat: peers_version")
    return Beat(drain, sanitize(reason or "", 32), version)
