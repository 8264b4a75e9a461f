"""The agent loop (ARCHITECTURE §4): register, then every interval heartbeat and, when
the control plane's peers version moved, fetch the peers changed since ours and apply
only the difference; drain on request or on AWS notice.

Logs carry counts only: never a peer key, client address or endpoint.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

import node_daemon
from node_daemon import host
from node_daemon.api import ApiUnavailable, NodeApi, Refused, Unauthorized
from node_daemon.aws import Imds, complete_lifecycle_action
from node_daemon.metrics import Metrics
from node_daemon.peers import Plan, owners_of, plan
from node_daemon.wg import Driver

log = logging.getLogger("node-daemon")
ACTIVE_WINDOW_S = 180
CREDENTIAL_FILE = "node.credential"  # in the (tmpfs) state dir, 0600


@dataclass
class Options:
    interface: str
    listen_port: int
    region: str
    public_ip: str
    instance_id: str
    state_dir: Path
    heartbeat_interval: float | None = None  # None: the control plane's
    backoff_max: float = 300.0
    scan_interval: float = 60.0
    sysctl_file: Path = Path("/etc/sysctl.d/90-idra.conf")
    asg_name: str | None = None
    lifecycle_hook: str | None = None
    lifecycle_timeout: float = 3600.0


def wg_keypair() -> tuple[str, str]:
    """A fresh key pair from ``wg genkey``/``wg pubkey`` (no hand-written crypto)."""
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    public = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
    ).stdout
    return private.strip(), public.strip()


class Agent:
    def __init__(self, opts: Options, api: NodeApi, driver: Driver, metrics: Metrics,
                 imds: Imds | None = None) -> None:  # fmt: skip
        self.opts, self.api, self.driver, self.metrics, self.imds = opts, api, driver, metrics, imds
        self.node_id: str | None = None
        self.version: int | None = None
        self.interval = opts.heartbeat_interval or 10.0
        self.pools: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.live: dict[str, str] = {}
        self.owners: dict[str, str] = {}
        self.draining = self.unauthorized = self.terminating = self.lifecycle_done = False
        self.failures = 0
        self.active_peers = 0
        self.last_scan = 0.0
        self.terminating_since = 0.0
        self.stats = host.HostStats(opts.interface)
        self.public_key = ""
        self._bytes_seen = (0, 0)
        self.refused = False
        self.api.credential = self._load_credential()

    # -- credential --------------------------------------------------------------------

    def _load_credential(self) -> str | None:
        """The credential of an earlier run (an agent restart keeps the node)."""
        try:
            return (self.opts.state_dir / CREDENTIAL_FILE).read_text().strip() or None
        except OSError:
            return None

    def _save_credential(self, credential: str) -> None:
        """Write it 0600 from the start, atomically (never logged)."""
        folder = self.opts.state_dir
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{CREDENTIAL_FILE}.", dir=folder)
        with os.fdopen(fd, "w") as handle:
            handle.write(credential + "\n")
        Path(tmp).replace(folder / CREDENTIAL_FILE)

    # -- start -------------------------------------------------------------------------

    def ensure_key(self) -> None:
        """Reuse the key already on the interface (restart: no re-key); else make one."""
        device = self.driver.read()
        if device.has_private_key:
            public = self.driver.public_key()
            if device.listen_port != self.opts.listen_port:
                self.driver.configure(None, self.opts.listen_port)
            log.info("reusing the interface key (%d peers kept)", len(device.peers))
        else:
            private, public = wg_keypair()
            key_file = self.opts.state_dir / "private.key"
            key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            key_file.touch(mode=0o600)
            key_file.write_text(private + "\n")
            self.driver.configure(private, self.opts.listen_port)
            log.info("generated the node key")
        self.public_key = public
        self.live = {key: peer.allowed_ips for key, peer in device.peers.items()}
        self.owners = owners_of(self.live)

    def register(self) -> None:
        """Prove which instance we are (signed identity document from IMDSv2) with
        NODE_TOKEN, plus our credential when we have one; keep the credential we get."""
        if self.imds is None:
            raise RuntimeError("no instance metadata: cannot prove our identity")
        reply = self.api.register({
            "identity": self.imds.identity(), "public_ip": self.opts.public_ip,
            "public_key": self.public_key, "listen_port": self.opts.listen_port,
            "agent_version": node_daemon.__version__,
        })  # fmt: skip
        if reply["node_credential"] != self.api.credential:
            self._save_credential(reply["node_credential"])
            self.api.credential = reply["node_credential"]
        self.node_id = reply["node_id"]
        self.interval = self.opts.heartbeat_interval or float(reply["heartbeat_interval_s"])
        pool = reply["client_pool"]
        self.pools = [ipaddress.ip_network(pool["ipv4"]), ipaddress.ip_network(pool["ipv6"])]
        log.info("registered; heartbeat every %.0f s", self.interval)

    # -- cycle -------------------------------------------------------------------------

    def sync(self) -> Plan:
        """Fetch the peers changed since our version and apply only the difference."""
        reply = self.api.peers(self.node_id, self.version)
        result = plan(
            reply["peers"], reply["removed"], self.live, self.pools,
            full=reply["full"], accept_new=not self.draining, owners=self.owners,
        )  # fmt: skip
        self._apply(result)
        self.version = reply["version"]
        for reason, count in result.rejected.items():
            self.metrics.rejected.labels(reason).inc(count)
        if result.upserts or result.removes or result.rejected:
            log.info("sync%s: %d added, %d updated, %d removed, %d rejected",
                     " (full)" if reply["full"] else "", result.added, result.updated,
                     len(result.removes), sum(result.rejected.values()))  # fmt: skip
        self.metrics.syncs.labels("ok").inc()
        self.metrics.last_sync.set_to_current_time()
        return result

    def _apply(self, result: Plan) -> None:
        if not (result.upserts or result.removes):
            return
        self.driver.apply(result.upserts, result.removes)
        for key in result.removes:
            for ip in self.live.pop(key, "").split(","):
                self.owners.pop(ip, None)
        for key, ips in result.upserts.items():
            for ip in self.live.get(key, "").split(","):
                if self.owners.get(ip) == key:
                    del self.owners[ip]
            self.live[key] = ips
            self.owners.update(dict.fromkeys(ips.split(","), key))
        self.metrics.peer_changes.labels("added").inc(result.added)
        self.metrics.peer_changes.labels("updated").inc(result.updated)
        self.metrics.peer_changes.labels("removed").inc(len(result.removes))
        self.metrics.peers.set(len(self.live))

    def scan(self) -> None:
        """Read the interface (O(peers), every scan interval): count active peers and
        put back anything that drifted from what we applied."""
        device = self.driver.read()
        now = time.time()
        self.active_peers = sum(
            1 for p in device.peers.values() if now - p.last_handshake < ACTIVE_WINDOW_S
        )
        wrong = {k: ips for k, ips in self.live.items() if device.peers.get(k, None) is None
                 or device.peers[k].allowed_ips != ips}  # fmt: skip
        extra = [k for k in device.peers if k not in self.live]
        if wrong or extra:
            self.driver.apply(wrong, extra)
            log.warning("interface drift repaired: %d peers restored, %d removed",
                        len(wrong), len(extra))  # fmt: skip
        self.metrics.active_peers.set(self.active_peers)
        self.metrics.peers.set(len(self.live))
        self.last_scan = time.monotonic()

    def heartbeat(self) -> int:
        """Report load and integrity; returns the control plane's peers version."""
        stats = self.stats.sample() | {"peers": len(self.live), "active_peers": self.active_peers}
        integrity = {
            "nftables_sha256": host.nftables_sha256(),
            "sysctl_ok": host.sysctl_ok(self.opts.sysctl_file),
            "agent_sha256": host.agent_sha256(),
            "root_readonly": host.root_readonly(),
        }
        self.metrics.integrity_ok.set(int(integrity["sysctl_ok"]))
        self.metrics.root_readonly.set(int(integrity["root_readonly"]))
        reply = self.api.heartbeat(self.node_id, {
            "state": "draining" if self.draining else "active",
            "peers_version": self.version or 0, "stats": stats, "integrity": integrity,
        })  # fmt: skip
        if reply["drain"] and not self.draining:
            log.warning("drain requested (%s): no new peers from now on", reply["drain_reason"])
        self.metrics.heartbeats.inc()
        self.draining = self.draining or reply["drain"]
        self.metrics.draining.set(int(self.draining))
        return reply["peers_version"]

    def watch_termination(self) -> None:
        """AWS is terminating us: drain ourselves, then let the group go on when the
        last user has left or the hook's time is nearly up."""
        if self.imds is None or self.lifecycle_done:
            return
        if not self.terminating and self.imds.terminating():
            self.terminating = self.draining = True
            self.terminating_since = time.monotonic()
            log.warning("termination notice: draining")
        if not self.terminating or not (self.opts.asg_name and self.opts.lifecycle_hook):
            return
        overdue = time.monotonic() - self.terminating_since > self.opts.lifecycle_timeout - 60
        if self.active_peers == 0 or overdue:
            complete_lifecycle_action(self.opts.asg_name, self.opts.lifecycle_hook,
                                      self.opts.instance_id, self.opts.region)  # fmt: skip
            self.lifecycle_done = True
            log.info("lifecycle action completed (%s)", "empty" if not overdue else "deadline")

    def cycle(self) -> float:
        """One round; returns how long to wait before the next."""
        try:
            if self.node_id is None:
                self.register()
            if time.monotonic() - self.last_scan >= self.opts.scan_interval:
                self.scan()
            latest = self.heartbeat()  # idle cycle: this call only
            if self.version is None or latest != self.version:
                self.sync()
            self.watch_termination()
        except Unauthorized:
            if self.node_id is not None:  # credential refused (record gone?): register again
                log.warning("control plane refuses our node credential: registering again")
                self.node_id = None
                return self.interval
            if not self.unauthorized:
                log.error("control plane refuses our token: sync stopped, peers kept")
            self.unauthorized = True
            self.metrics.unauthorized.set(1)
            self.metrics.syncs.labels("unauthorized").inc()
            return self.opts.backoff_max
        except Refused as exc:
            if not self.refused:
                log.error("registration refused (%s): this instance needs replacing; "
                          "peers kept", exc)  # fmt: skip
            self.refused = self.unauthorized = True
            self.metrics.unauthorized.set(1)
            self.metrics.syncs.labels("refused").inc()
            return self.opts.backoff_max
        except (ApiUnavailable, OSError, RuntimeError, httpx.HTTPError) as exc:
            self.failures += 1
            self.metrics.syncs.labels("error").inc()
            cap = min(self.opts.backoff_max, self.interval * 2**self.failures)
            delay = random.uniform(0, cap)  # noqa: S311 - jitter (full-jitter backoff)
            log.warning("control plane unavailable (%s): peers kept, retry in %.0f s", exc, delay)
            return delay
        finally:
            self._count_bytes()
        if self.unauthorized:
            log.info("token accepted again: sync resumed")
        self.unauthorized = self.refused = False
        self.metrics.unauthorized.set(0)
        self.failures = 0
        return self.interval * random.uniform(0.9, 1.1)  # noqa: S311 - jitter

    def _count_bytes(self) -> None:
        sent, received = self.api.bytes_sent, self.api.bytes_received
        self.metrics.api_bytes.labels("sent").inc(sent - self._bytes_seen[0])
        self.metrics.api_bytes.labels("received").inc(received - self._bytes_seen[1])
        self._bytes_seen = (sent, received)

    def run(self, stop: threading.Event) -> None:
        self.ensure_key()
        while not stop.is_set():
            stop.wait(self.cycle())
