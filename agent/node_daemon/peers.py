"""Peer validation and the difference to apply (ARCHITECTURE §4).

A peer is accepted only with a canonical 32-byte base64 public key (not all zeros, not
the node's own) and allowed IPs that are single hosts (/32, /128) inside the client pool,
neither the node's own address nor a pool's network or broadcast address, owned by no
other peer. A bad peer is
rejected on its own and counted by reason; the others still apply.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Plan:
    """What one sync will do to the interface."""

    upserts: dict[str, str] = field(default_factory=dict)  # key → "ip/32,ip/128"
    removes: list[str] = field(default_factory=list)
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason → count
    skipped: int = 0  # valid new peers left for the next full sync (a bound was reached)


ZERO_KEY = base64.b64encode(bytes(32)).decode()


def valid_key(key: Any) -> bool:
    """32 bytes in canonical base64 (one spelling per key), not all zeros."""
    if not isinstance(key, str) or len(key) != 44 or key == ZERO_KEY:
        return False
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 32 and base64.b64encode(raw).decode() == key


def client_pools(offered: list[Network], own: list[Network]) -> list[Network]:
    """The control plane's pools intersected with the interface's own prefixes."""
    result = []
    for pool in offered:
        for prefix in own:
            if pool.version != prefix.version:
                continue
            if pool.subnet_of(prefix):
                result.append(pool)
            elif prefix.subnet_of(pool):
                result.append(prefix)
    return sorted(set(result), key=lambda n: (n.version, n))


def reserved_hosts(pools: list[Network], own: list[str]) -> set[str]:
    """Hosts no client may hold: each pool's network and broadcast address, the node's."""
    hosts = {ipaddress.ip_network(ip) for ip in own}
    for pool in pools:
        hosts.add(ipaddress.ip_network(pool.network_address))
        hosts.add(ipaddress.ip_network(pool.broadcast_address))
    return {str(host) for host in hosts}


def canary_hosts(block: list[Network]) -> frozenset[str]:
    """Every host of the canary block as the interface spells it (``10.96.0.240/32``)."""
    return frozenset(str(ipaddress.ip_network(ip)) for net in block for ip in net)


def is_canary(allowed_ips: str, canary: frozenset[str]) -> bool:
    """The peer holds an address of the canary block (``allowed_ips``: "a/32,b/128")."""
    return bool(canary) and any(ip in canary for ip in allowed_ips.split(","))


def _allowed(ips: Any, pools: list[Network], reserved: set[str]) -> tuple[str | None, str]:
    """Normalised allowed IPs, or (None, reason)."""
    if not isinstance(ips, list) or not ips:
        return None, "no allowed IPs"
    hosts = []
    for text in ips:
        try:
            net = ipaddress.ip_network(str(text), strict=True)
        except ValueError:
            return None, "bad allowed IP"
        if net.prefixlen != net.max_prefixlen:
            return None, "allowed IP not a single host"
        if not any(net.version == pool.version and net.subnet_of(pool) for pool in pools):
            return None, "allowed IP outside the client pool"
        if str(net) in reserved:
            return None, "allowed IP reserved (node or network address)"
        hosts.append(str(net))
    if len(set(hosts)) != len(hosts):
        return None, "duplicate allowed IP"
    return ",".join(sorted(hosts)), ""


def _key_of(peer: Any) -> str | None:
    key = peer.get("public_key") if isinstance(peer, dict) else None
    return key if isinstance(key, str) else None


def owners_of(live: dict[str, str]) -> dict[str, str]:
    """Allowed IP → the live peer holding it."""
    return {ip: key for key, ips in live.items() for ip in ips.split(",") if ip}


def plan(
    incoming: list[dict[str, Any]],
    removed: list[str],
    live: dict[str, str],
    pools: list[Network],
    *,
    full: bool,
    accept_new: bool = True,
    owners: dict[str, str] | None = None,
    own_key: str | None = None,
    reserved: set[str] | None = None,
) -> Plan:
    """Compare what the control plane sent with the live interface (key → allowed IPs).

    ``full``: ``incoming`` is the whole desired set (live peers not in it go); otherwise
    it holds changes only and ``removed`` lists keys to drop, and the work is O(change)
    when the caller keeps ``owners`` (:func:`owners_of` ``live``) up to date.
    ``accept_new=False`` (draining) never adds a peer, but still updates and removes.
    ``own_key`` (the node's public key) and ``reserved`` hosts are never a peer's.
    """
    reserved = reserved_hosts(pools, []) if reserved is None else reserved
    result = Plan()
    keys = [_key_of(p) for p in incoming]
    counts = Counter(keys)
    valid: dict[str, str] = {}
    for peer, key in zip(incoming, keys, strict=True):
        if not valid_key(key):
            result.rejected["bad public key"] += 1
        elif key == own_key:
            result.rejected["the node's own key"] += 1
        elif counts[key] > 1:
            result.rejected["duplicate public key"] += 1
        else:
            ips, reason = _allowed(peer.get("allowed_ips"), pools, reserved)
            if ips is None:
                result.rejected[reason] += 1
            else:
                valid[key] = ips

    mentioned = {key for key in keys if valid_key(key)}  # a rejected live peer stays as is
    goes = (
        set(live) - mentioned
        if full
        else {k for k in removed if isinstance(k, str) and k in live} - mentioned
    )
    owners = owners_of(live) if owners is None else owners
    claimed: dict[str, str] = {}  # claims made in this batch
    for key, ips in valid.items():
        holders = {
            holder
            for ip in ips.split(",")
            if (holder := claimed.get(ip) or owners.get(ip)) not in (None, key)
            and holder not in goes
            and not (holder in valid and ip not in valid[holder].split(","))  # released
        }
        if holders:
            result.rejected["allowed IP owned by another peer"] += 1
            continue
        if live.get(key) == ips:
            result.unchanged += 1
            continue
        if key not in live and not accept_new:
            continue
        claimed.update(dict.fromkeys(ips.split(","), key))
        result.upserts[key] = ips
        if key in live:
            result.updated += 1
        else:
            result.added += 1
    result.removes = sorted(goes)
    return result
