"""What the node reports about itself: load and traffic aggregates, integrity hashes."""

from __future__ import annotations

import hashlib
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


def nftables_sha256() -> str:
    """sha256 of the live ruleset without counters (``nft -s``): changes only with rules."""
    result = subprocess.run(
        ["nft", "-s", "list", "ruleset"], capture_output=True, text=True, check=False, timeout=30
    )
    return hashlib.sha256(result.stdout.encode()).hexdigest()


def sysctl_ok(conf: Path) -> bool:
    """Every key of the rendered sysctl.conf still has its value (absent keys skipped)."""
    try:
        lines = conf.read_text().splitlines()
    except FileNotFoundError:
        return True
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        path = Path("/proc/sys") / key.strip().replace(".", "/")
        try:
            live = path.read_text().split()
        except OSError:
            continue
        if live != value.split():
            return False
    return True


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
