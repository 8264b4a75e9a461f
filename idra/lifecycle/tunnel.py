"""The canary's tunnel to one node: a network namespace of its own whose only way out is
one WireGuard interface to that node, so every probe made inside leaves as the node.

The WireGuard interface is created in the canary's own namespace (its UDP socket stays
there, where the node's endpoint is reachable) and then moved into the probe namespace,
as in WireGuard's "netns" isolation: kernel WireGuard when ``ip link add … type
wireguard`` works, wireguard-go otherwise. Everything is removed afterwards, also on
failure. Namespaces are named ``idracanary-<pid>-<random>``: :func:`sweep` removes those
of a canary process that no longer runs (a crash leftover).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from idra.lifecycle.dnsbl import Check, Verdict
from idra.lifecycle.probes import Target
from idra.netns import (
    Netns,
    create_netns,
    delete_netns,
    is_running,
    netns_names,
    run,
    start_wireguard,
    stop_process,
    unique_name,
)

NS_PREFIX = "idracanary-"
IF_PREFIX = "icn"
ETC_NETNS = Path("/etc/netns")  # iproute2 bind-mounts /etc/netns/<ns>/resolv.conf
_OURS = re.compile(rf"^{NS_PREFIX}(\d+)-[0-9a-f]+$")


class TunnelError(RuntimeError):
    """The tunnel to a node could not be made or did not come up."""


@contextmanager
def tunnel(
    peer: dict[str, str], private_key: str, handshake_timeout: float = 10,
    dns: str | None = None,
) -> Iterator[Netns]:  # fmt: skip
    """A probe namespace routed entirely through a WireGuard tunnel to ``peer`` (the
    ``POST /v1/nodes/{id}/canary`` reply); :class:`TunnelError` without a handshake
    within ``handshake_timeout`` s."""
    ns = create_netns(f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    ifname, procs = unique_name(IF_PREFIX), []
    try:
        try:
            _setup(ns, ifname, procs, peer, dns)
            _wait_for_handshake(ns, ifname, peer, private_key, handshake_timeout)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            if isinstance(exc, TunnelError):
                raise
            # the helpers' messages hold the command (keys, endpoint): only the outcome
            reason = str(exc).rpartition(": exit ")[2]
            raise TunnelError(f"tunnel setup failed: {reason}") from None
        yield ns
    finally:
        for proc in procs:
            stop_process(proc.pid)
        _remove(ns.name)
        run(["ip", "link", "del", ifname], check=False)  # if it never left this namespace


def _setup(ns: Netns, ifname: str, procs: list, peer: dict[str, str], dns: str | None) -> None:
    if run(["ip", "link", "add", ifname, "type", "wireguard"], check=False).returncode:
        procs.append(start_wireguard(None, ifname))  # no kernel WireGuard: userspace
    run(["ip", "link", "set", ifname, "netns", ns.name])
    ns.addr(ifname, peer["ipv4"], peer["ipv6"])
    ns.ip("link", "set", ifname, "mtu", "1420", "up")
    ns.route("default", "dev", ifname)
    ns.route("::/0", "dev", ifname)
    if dns:
        (ETC_NETNS / ns.name).mkdir(parents=True, exist_ok=True)
        (ETC_NETNS / ns.name / "resolv.conf").write_text(f"nameserver {dns}\n")


def _set_peer(ns: Netns, ifname: str, peer: dict[str, str], private_key: str) -> None:
    ns.run("wg", "set", ifname, "private-key", "/dev/stdin", "peer", peer["public_key"],
           "endpoint", peer["endpoint"], "allowed-ips", "0.0.0.0/0,::/0",
           "persistent-keepalive", "25", input=private_key)  # fmt: skip


def _wait_for_handshake(
    ns: Netns, ifname: str, peer: dict[str, str], private_key: str, timeout: float
) -> None:
    """Set the peer (its keepalive starts a handshake) and wait for the handshake. The
    peer may reach the node a moment after the first try, and WireGuard waits 5 s to
    retry: the peer is set afresh every 2 s instead."""
    deadline, again = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= again:
            ns.run("wg", "set", ifname, "peer", peer["public_key"], "remove")
            _set_peer(ns, ifname, peer, private_key)
            again = time.monotonic() + 2
        shakes = ns.run("wg", "show", ifname, "latest-handshakes").stdout.split()
        if len(shakes) == 2 and shakes[1] != "0":
            return
        time.sleep(0.1)
    raise TunnelError(f"no WireGuard handshake with the node within {timeout:g} s")


def _remove(name: str) -> None:
    for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError):  # a probe run left behind
            os.kill(int(pid), signal.SIGKILL)
    delete_netns(name)
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)


def sweep() -> int:
    """Remove the probe namespaces of canary processes that are gone; how many."""
    gone = []
    for name in netns_names(check=False):
        match = _OURS.match(name)
        if match and not is_running(int(match.group(1))):
            gone.append(name)
    for name in gone:
        _remove(name)
    return len(gone)


def probe_through(
    peer: dict[str, str], private_key: str, node: dict[str, Any], targets: list[Target],
    whoami: str, handshake_timeout: float = 10, dns: str | None = None,
) -> list[Check]:  # fmt: skip
    """The egress check and the probes, made inside a tunnel to the node. A tunnel that
    does not come up, or a probe run that fails, is an error, never a listing."""
    request = {
        "targets": [t.model_dump() for t in targets],
        "whoami": whoami,
        "expected": node["public_ip"],
    }
    bound = 30 + 25 * (len(targets) + 1)  # each request: 10 s, one retry
    try:
        with tunnel(peer, private_key, handshake_timeout, dns) as ns:
            result = ns.run(sys.executable, "-m", "idra.lifecycle.probes", check=False,
                            input=json.dumps(request), timeout=bound)  # fmt: skip
    except TunnelError as exc:
        return [Check("tunnel", Verdict.ERROR, _one_line(str(exc)))]
    except subprocess.TimeoutExpired:
        return [Check("probes", Verdict.ERROR, f"no result within {bound} s")]
    try:
        found = [Check(c["name"], Verdict(c["verdict"]), c["detail"]) for c in
                 json.loads(result.stdout)]  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return [Check("probes", Verdict.ERROR, f"probe run failed (exit {result.returncode})")]
    return [Check("tunnel", Verdict.CLEAN, "handshake"), *found]


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
