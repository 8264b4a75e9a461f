"""What the node reports about itself: load and traffic aggregates, integrity hashes."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import node_daemon


class HostStats:
    """CPU, memory, load and interface byte counters (O(1), from /proc and /sys)."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self._cpu = self._cpu_times()
        self._bytes = (self._counter("rx_bytes"), self._counter("tx_bytes"), time.monotonic())

    @staticmethod
    def _cpu_times() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    def _counter(self, name: str) -> int:
        try:
            return int(Path(f"/sys/class/net/{self.interface}/statistics/{name}").read_text())
        except OSError:
            return 0

    def sample(self) -> dict[str, float]:
        busy, total = self._cpu_times()
        cpu = 100 * (busy - self._cpu[0]) / max(total - self._cpu[1], 1)
        self._cpu = (busy, total)
        rx, tx, now = self._counter("rx_bytes"), self._counter("tx_bytes"), time.monotonic()
        elapsed = max(now - self._bytes[2], 1e-3)
        rx_bps = max(rx - self._bytes[0], 0) * 8 / elapsed
        tx_bps = max(tx - self._bytes[1], 0) * 8 / elapsed
        self._bytes = (rx, tx, now)
        meminfo = dict(
            (line.split(":")[0], int(line.split()[1]))
            for line in Path("/proc/meminfo").read_text().splitlines()
        )
        mem = 100 * (1 - meminfo["MemAvailable"] / meminfo["MemTotal"])
        return {
            "load1": os.getloadavg()[0],
            "cpu_pct": round(min(max(cpu, 0), 100), 2),
            "mem_pct": round(mem, 2),
            "rx_bytes": rx,
            "tx_bytes": tx,
            "rx_bps": round(rx_bps, 1),
            "tx_bps": round(tx_bps, 1),
        }


def in_netns(netns: str | None, *args: str) -> list[str]:
    """A command, run in network namespace ``netns`` when one is given (labs, tests)."""
    return ["ip", "netns", "exec", netns, *args] if netns else list(args)


def interface_addresses(
    interface: str, netns: str | None = None
) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """The interface's own global addresses with their prefixes (``ip -j addr``)."""
    args = ["ip", "-j", "addr", "show", "dev", interface]
    out = subprocess.run(
        in_netns(netns, *args), capture_output=True, text=True, check=True, timeout=10
    ).stdout
    return [
        ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
        for link in json.loads(out)
        for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    ]


def nftables_sha256(netns: str | None = None) -> str | None:
    """sha256 of the live ruleset without counters (``nft -s``): changes only with rules.
    None (unknown) when ``nft`` fails: never the hash of an empty output."""
    try:
        result = subprocess.run(
            in_netns(netns, "nft", "-s", "list", "ruleset"),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return hashlib.sha256(result.stdout.encode()).hexdigest()


def sysctl_ok(conf: Path, netns: str | None = None) -> bool | None:
    """Every key of the rendered sysctl.conf still has its value (keys this kernel lacks
    are skipped). None (unknown) when the rendered file or the values cannot be read."""
    try:
        lines = conf.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    wanted = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        wanted[key.strip()] = value.split()
    if not wanted:
        return True
    live = _sysctl_values(list(wanted), netns)
    if live is None:
        return None
    return all(live[key] == value for key, value in wanted.items() if key in live)


def _sysctl_values(keys: list[str], netns: str | None) -> dict[str, list[str]] | None:
    paths = [str(Path("/proc/sys") / key.replace(".", "/")) for key in keys]
    if netns is None:
        values = {}
        for key, path in zip(keys, paths, strict=True):
            try:
                values[key] = Path(path).read_text().split()
            except OSError:
                continue
        return values
    script = 'for f; do [ -r "$f" ] && printf \'%s\\t%s\\n\' "$f" "$(cat "$f")"; done; true'
    try:
        out = subprocess.run(
            in_netns(netns, "sh", "-c", script, "sh", *paths),
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    by_path = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return {k: by_path[p].split() for k, p in zip(keys, paths, strict=True) if p in by_path}


class Integrity:
    """The node's integrity signals for the heartbeat; ``ok`` only when every signal is
    known and good (the ruleset as first seen by this agent, the rendered sysctl values)."""

    def __init__(self, sysctl_file: Path, netns: str | None = None) -> None:
        self.sysctl_file, self.netns = sysctl_file, netns
        self.baseline: str | None = None

    def check(self) -> tuple[dict[str, object], bool | None]:
        """(the heartbeat's integrity object, ok: True / False / None = unknown)."""
        ruleset = nftables_sha256(self.netns)
        if self.baseline is None:
            self.baseline = ruleset
        sysctl = sysctl_ok(self.sysctl_file, self.netns)
        report = {"nftables_sha256": ruleset, "sysctl_ok": sysctl, "agent_sha256": agent_sha256(),
                  "root_readonly": root_readonly()}  # fmt: skip
        if ruleset is None or sysctl is None:
            return report, None
        return report, ruleset == self.baseline and sysctl


def root_readonly(path: str = "/") -> bool:
    """The filesystem at ``path`` is mounted read-only (the node locks its root at boot)."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def agent_sha256() -> str:
    """sha256 of the running node-daemon.pyz (or of this package's sources)."""
    archive = Path(sys.argv[0])
    if archive.suffix == ".pyz" and archive.is_file():
        return hashlib.sha256(archive.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    package = Path(node_daemon.__file__).parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()
