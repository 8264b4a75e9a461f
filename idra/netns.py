"""Linux network namespaces for tests and the local lab (iproute2 + wireguard-go).

A :class:`Topology` owns every namespace, link and process it creates and removes them
all on :meth:`Topology.close` (also used as a context manager), even after a failure.
wireguard-go keeps its UAPI socket in the host-wide ``/var/run/wireguard/<ifname>.sock``,
so tunnel interface names must be unique on the machine: use :func:`unique_name`.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

WG_RUN_DIR = Path("/var/run/wireguard")


def unique_name(prefix: str, length: int = 15) -> str:
    """A name unlikely to clash on this machine (``prefix`` + random hex, ≤ ``length``)."""
    return prefix + secrets.token_hex(8)[: length - len(prefix)]


def run(args: Sequence[str], *, check: bool = True, timeout: float = 30, **kw):
    """Run a command, capture text output, raise with its stderr on failure."""
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


def netns_names(*, check: bool = True) -> list[str]:
    """The names of this machine's network namespaces (``ip netns list``)."""
    return run(["ip", "netns", "list"], check=check).stdout.split()


def parse_sysctl(text: str) -> dict[str, str]:
    """``key = value`` lines of a sysctl.conf, in order (comments and blanks skipped)."""
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings[key.strip()] = " ".join(value.split())
    return settings


def wg_keypair() -> tuple[str, str]:
    """A WireGuard (private, public) key pair from ``wg genkey``/``wg pubkey``."""
    private = run(["wg", "genkey"]).stdout.strip()
    return private, run(["wg", "pubkey"], input=private).stdout.strip()


@dataclass
class Netns:
    """One network namespace; commands run inside it with ``ip netns exec``."""

    name: str

    def exec_args(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30, **kw):
        return run(self.exec_args(*args), check=check, timeout=timeout, **kw)

    def ip(self, *args: str):
        return self.run("ip", *args)

    def addr(self, ifname: str, *cidrs: str) -> None:
        """Add addresses (v4 or v6, IPv6 without duplicate detection delay)."""
        for cidr in cidrs:
            v6 = ":" in cidr
            self.ip("-6" if v6 else "-4", "addr", "add", cidr, "dev", ifname, *["nodad"] * v6)

    def route(self, dest: str, *via: str) -> None:
        """Add or replace a route (family from the addresses)."""
        self.ip("-6" if ":" in dest + "".join(via) else "-4", "route", "replace", dest, *via)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def spawn(self, *args: str, log: Path | None = None, **kw) -> subprocess.Popen:
        """Start a process inside this namespace, in a session of its own."""
        if log is not None:
            kw["stdout"] = log.open("ab")
            kw["stderr"] = subprocess.STDOUT
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        return subprocess.Popen(self.exec_args(*args), start_new_session=True, **kw)

    def load_sysctl(self, text: str) -> dict[str, str]:
        """Apply a sysctl.conf's per-namespace keys; return the others (host-wide keys)."""
        skipped = {}
        for key, value in parse_sysctl(text).items():
            mode = self.run("stat", "-c", "%a", f"/proc/sys/{key.replace('.', '/')}", check=False)
            if mode.returncode != 0 or not int(mode.stdout, 8) & 0o200:
                skipped[key] = value  # absent or read-only in a namespace: host-wide
                continue
            self.run("sysctl", "-q", "-w", f"{key}={value}")
        return skipped


def create_netns(name: str) -> Netns:
    """Create a namespace with loopback up."""
    run(["ip", "netns", "add", name])
    ns = Netns(name)
    ns.ip("link", "set", "lo", "up")
    return ns


def delete_netns(name: str) -> None:
    run(["ip", "netns", "del", name], check=False)


def link(a: Netns, a_if: str, b: Netns, b_if: str, mtu: int | None = None) -> None:
    """A veth pair between two namespaces, both ends up."""
    tmp_a, tmp_b = unique_name("va"), unique_name("vb")
    run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
    for tmp, ns, ifname in ((tmp_a, a, a_if), (tmp_b, b, b_if)):
        run(["ip", "link", "set", tmp, "netns", ns.name, "name", ifname])
        if mtu:
            ns.ip("link", "set", ifname, "mtu", str(mtu))
        ns.ip("link", "set", ifname, "up")


def start_wireguard(ns: Netns | None, ifname: str, timeout: float = 10, **kw) -> subprocess.Popen:
    """Create ``ifname`` in ``ns`` (None: this process's namespace) with wireguard-go
    (userspace) and wait for its socket."""
    env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
    args = ("wireguard-go", "-f", ifname)
    if ns is None:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(args, start_new_session=True, env=env, **kw)
    else:
        proc = ns.spawn(*args, env=env, **kw)
    sock = WG_RUN_DIR / f"{ifname}.sock"
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc.pid)
            where = ns.name if ns else "this namespace"
            raise RuntimeError(f"wireguard-go did not create {ifname} in {where}")
        time.sleep(0.05)
    return proc


def stop_process(pid: int, timeout: float = 5) -> None:
    """SIGTERM the process group of ``pid`` (a session leader), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not is_running(pid):
                return
            time.sleep(0.05)


def is_running(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


@dataclass
class Topology:
    """Namespaces, links and processes made for one test; all removed on close."""

    prefix: str = "idra"
    namespaces: list[Netns] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def netns(self, role: str) -> Netns:
        """Create a namespace; the name is unique on this machine."""
        ns = create_netns(unique_name(f"{self.prefix}-{role[:4]}-", 24))
        self.namespaces.append(ns)
        return ns

    link = staticmethod(link)

    def spawn(self, ns: Netns, *args: str, **kw) -> subprocess.Popen:
        """Start a long-running process inside ``ns``; it is stopped on close."""
        proc = ns.spawn(*args, **kw)
        self.processes.append(proc)
        return proc

    def wireguard(self, ns: Netns, ifname: str, timeout: float = 10) -> subprocess.Popen:
        """Create ``ifname`` in ``ns`` with wireguard-go; stopped on close."""
        proc = start_wireguard(ns, ifname, timeout)
        self.processes.append(proc)
        return proc

    def wireguard_node(self, *addresses: str, prefix: str = "wgn") -> tuple[Netns, str]:
        """A ``node`` namespace with a wireguard-go interface holding ``addresses``, up."""
        node = self.netns("node")
        ifname = unique_name(prefix)
        self.wireguard(node, ifname)
        node.addr(ifname, *addresses)
        node.ip("link", "set", ifname, "up")
        return node, ifname

    def stop(self, proc: subprocess.Popen) -> None:
        """Stop one process started by :meth:`spawn` (and its session)."""
        stop_process(proc.pid)
        proc.wait()
        if proc in self.processes:
            self.processes.remove(proc)

    def close(self) -> None:
        """Stop every process, then delete every namespace (with their interfaces)."""
        for proc in reversed(list(self.processes)):
            self.stop(proc)
        for ns in reversed(self.namespaces):
            delete_netns(ns.name)
        self.namespaces.clear()
