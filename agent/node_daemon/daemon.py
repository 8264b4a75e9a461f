"""The agent loop (ARCHITECTURE §4): register, then every interval heartbeat and, when
the control plane's peers version moved, fetch the peers changed since ours and apply
only the difference; drain on request or on AWS notice.

Logs carry counts only: never a peer key, client address or endpoint.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import secrets
import subprocess
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import node_daemon
from node_daemon import host
from node_daemon import sync as peersync
from node_daemon.api import NodeApi, NotFound, Refused, Unauthorized
from node_daemon.aws import (
    Imds,
    aws_fault,
    complete_lifecycle_action,
    no_active_action,
    record_lifecycle_heartbeat,
)
from node_daemon.bounded import Fault, sanitize
from node_daemon.metrics import Metrics
from node_daemon.peers import (
    Plan,
    canary_hosts,
    client_pools,
    is_canary,
    plan,
    reserved_hosts,
)
from node_daemon.replies import CREDENTIAL, Peers
from node_daemon.state import PeerTable
from node_daemon.wg import Driver

log = logging.getLogger("node-daemon")
ACTIVE_WINDOW_S = 180
CREDENTIAL_FILE = "node.credential"  # in the (tmpfs) state dir, 0600


@dataclass
class Options:
    interface: str
    listen_port: int
    region: str | None  # None: from instance metadata
    public_ip: str | None
    instance_id: str | None
    state_dir: Path
    heartbeat_interval: float | None = None  # None: the control plane's
    backoff_max: float = 300.0
    scan_interval: float = 60.0
    sysctl_file: Path = Path("/etc/sysctl.d/90-idra.conf")
    asg_name: str | None = None
    lifecycle_hook: str | None = None
    lifecycle_timeout: float = 3600.0  # the termination hook's heartbeat timeout
    interface_netns: str | None = None  # labs and tests: the interface's namespace
    launch_hook: str | None = None  # completed once registered and first sync applied
    max_drain: float | None = None  # longest self-drain on termination (None: the timeout)
    long_poll_s: float = peersync.LONG_POLL_S  # 0: sync on the heartbeat only (v1)
    page_size: int = peersync.PAGE  # 0: the whole list in one reply (v1)


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
        self.reserved: set[str] = set()
        self.canary: frozenset[str] = frozenset()  # canary block hosts: never a user
        self.integrity = host.Integrity(opts.sysctl_file, opts.interface_netns)
        self.live = PeerTable()  # key → allowed IPs, and the address → owner index
        self.draining = self.unauthorized = self.terminating = self.lifecycle_done = False
        self.ready_done = False
        self.hook_heartbeat_at = 0.0
        self.failures = 0
        self.active_peers = 0
        self.last_scan = 0.0
        self.terminating_since = 0.0
        self.stats = host.HostStats(opts.interface)
        self.public_key = ""
        self._bytes_seen = (0, 0)
        self.refused = self.retired = False
        self.peers_lock = threading.Lock()  # the long-poll thread applies, the loop scans
        self.poller: peersync.Poller | None = None
        self.api.credential = self._load_credential()

    # -- credential --------------------------------------------------------------------

    def _load_credential(self) -> str | None:
        """The credential of an earlier run (an agent restart keeps the node)."""
        try:
            credential = (self.opts.state_dir / CREDENTIAL_FILE).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return credential if CREDENTIAL.fullmatch(credential) else None

    def _ensure_credential(self) -> None:
        """Our credential exists, 0600 on the state dir, before the first registration:
        chosen here (256 bits), sent with every registration, so the control plane binds
        it on first use and a retry after a lost reply is the same node."""
        if self.api.credential:
            return
        credential = secrets.token_urlsafe(32)
        try:
            self._save_credential(credential)
        except OSError:
            raise Fault("state_dir", "unwritable", "node credential not saved") from None
        self.api.credential = credential

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
        else:  # the key lives on the interface only (tmpfs-like: gone with it)
            private, public = wg_keypair()
            self.driver.configure(private, self.opts.listen_port)
            log.info("generated the node key")
        self.public_key = public
        self.live = PeerTable((key, peer.allowed_ips) for key, peer in device.peers.items())

    def identify(self) -> None:
        """Instance id and region as the signed identity document says (what the control
        plane uses); the public IP from metadata where not given."""
        if self.opts.instance_id is None:
            if self.imds is None:
                raise Fault("imds", "missing", "no instance metadata")
            try:
                claims = json.loads(self.imds.identity()["document"])
                region, instance_id = claims["region"], claims["instanceId"]
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                raise Fault("imds", "malformed", "instance identity document") from None
            if not all(isinstance(v, str) and v.isprintable() and 0 < len(v) <= 64
                       for v in (region, instance_id)):  # fmt: skip
                raise Fault("imds", "malformed", "instance identity document")
            if self.opts.region and self.opts.region != region:
                raise Fault("imds", "mismatch", "identity document region is not --region")
            self.opts.region, self.opts.instance_id = region, instance_id
        if self.opts.public_ip is None:
            value = self.imds.get("public-ipv4") if self.imds else None
            try:
                self.opts.public_ip = str(ipaddress.ip_address(value or ""))
            except ValueError:
                raise Fault("imds", "malformed", "public-ipv4") from None

    def register(self) -> None:
        """Prove which instance we are (signed identity document from IMDSv2) with
        NODE_TOKEN, plus our credential when we have one; keep the credential we get.
        Registers again after a 404 (same key); takes the pool bounded by the interface's
        own prefixes; the next sync is a full one."""
        self.identify()
        if self.imds is None:
            raise Fault("imds", "missing", "no instance metadata: cannot prove our identity")
        try:
            own = host.interface_addresses(self.opts.interface, self.opts.interface_netns)
        except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError):
            raise Fault("wireguard", "interface", "addresses unreadable") from None
        self._ensure_credential()
        reply = self.api.register({
            "identity": self.imds.identity(), "public_ip": self.opts.public_ip,
            "public_key": self.public_key, "listen_port": self.opts.listen_port,
            "agent_version": node_daemon.__version__,
        })  # fmt: skip
        if reply.credential and reply.credential != self.api.credential:  # an older server's
            try:
                self._save_credential(reply.credential)
            except OSError:
                raise Fault("state_dir", "unwritable", "node credential not saved") from None
            self.api.credential = reply.credential
        self.node_id, self.version = reply.node_id, None
        self.interval = self.opts.heartbeat_interval or reply.interval
        self.pools = client_pools(reply.pools, [a.network for a in own])
        self.reserved = reserved_hosts(self.pools, [str(a.ip) for a in own])
        self.canary = canary_hosts(reply.canary)
        if len(self.pools) < len(reply.pools):
            log.warning("client pool reduced to the interface's own prefixes")
        self.metrics.registrations.inc()
        log.info("registered; heartbeat every %.1f s", self.interval)

    # -- cycle -------------------------------------------------------------------------

    def sync(self, wait: float | None = None, api: NodeApi | None = None) -> Peers:
        """Fetch the peers changed since our version (a long-poll with ``wait``) and
        apply only the difference; a full list page by page (:mod:`node_daemon.sync`)."""
        result, reply = peersync.fetch(self, api or self.api, wait)
        for reason, count in result.rejected.items():
            self.metrics.rejected.labels(reason).inc(count)
        if result.added or result.updated or result.removes or result.rejected:
            log.info("sync%s: %d added, %d updated, %d removed, %d rejected",
                     " (full)" if reply.full else "", result.added, result.updated,
                     len(result.removes), sum(result.rejected.values()))  # fmt: skip
        self.metrics.syncs.labels("ok").inc()
        self.metrics.last_sync.set_to_current_time()
        return reply

    def plan(self, incoming: list, removed: list, *, full: bool) -> Plan:
        return plan(
            incoming, removed, self.live, self.pools, full=full, accept_new=not self.draining,
            owners=self.live.owners, own_key=self.public_key, reserved=self.reserved,
        )  # fmt: skip

    def _apply(self, result: Plan) -> None:
        if self.retired or not (result.upserts or result.removes):
            return  # retired: a sync still under way applies nothing
        self._fit(result)
        self.driver.apply(result.upserts, result.removes)
        for key in result.removes:
            self.live.pop(key)
        for key, ips in result.upserts.items():
            self.live.put(key, ips)
        self.metrics.peer_changes.labels("added").inc(result.added)
        self.metrics.peer_changes.labels("updated").inc(result.updated)
        self.metrics.peer_changes.labels("removed").inc(len(result.removes))
        self.metrics.peers.set(len(self.live))

    def _fit(self, result: Plan) -> None:
        """Never more than ``--max-peers`` on the interface: new peers past it are left
        out (``result.skipped``; the next full sync adds them once there is room)."""
        room = max(0, self.api.max_peers - len(self.live) + len(result.removes))
        if result.added <= room:
            return
        new = [key for key in result.upserts if key not in self.live]
        for key in new[room:]:
            del result.upserts[key]
        result.skipped += len(new) - room
        result.added = room

    def scan(self) -> None:
        """Read the interface (O(peers), every scan interval): count active peers (users
        only: a peer in the canary block is the canary, never a user) and put back
        anything that drifted from what we applied."""
        with self.peers_lock:
            self._scan()

    def _scan(self) -> None:
        """Streams the interface's peers (never the whole dump at once); a second pass
        only when a peer we applied is missing."""
        now, active, matching = time.time(), 0, 0
        wrong: dict[str, str] = {}
        extra: list[str] = []
        for key, peer in self.driver.peers():
            recent = now - peer.last_handshake < ACTIVE_WINDOW_S
            active += recent and not is_canary(peer.allowed_ips, self.canary)
            ips = self.live.get(key)
            if ips is None:
                extra.append(key)
            elif ips != peer.allowed_ips:
                wrong[key] = ips
            else:
                matching += 1
        if matching + len(wrong) < len(self.live):  # some are missing from the interface
            present = {key for key, _ in self.driver.peers()}
            wrong.update((k, ips) for k, ips in self.live.items() if k not in present)
        self.active_peers = active
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
        integrity, ok = self.integrity.check()
        integrity["root_readonly"] = host.root_readonly()
        self.metrics.integrity_ok.set(int(ok is True))
        self.metrics.integrity_unknown.set(int(ok is None))
        self.metrics.root_readonly.set(int(integrity["root_readonly"]))
        reply = self.api.heartbeat(self.node_id, {
            "state": "draining" if self.draining else "active",
            "peers_version": self.version or 0, "stats": stats, "integrity": integrity,
        })  # fmt: skip
        if reply.drain and not self.draining:
            log.warning("drain requested (%s): no new peers from now on", reply.drain_reason)
        self.metrics.heartbeats.inc()
        self.draining = self.draining or reply.drain
        self.metrics.draining.set(int(self.draining))
        return reply.peers_version

    def watch_termination(self) -> None:
        """AWS is terminating us: drain ourselves, then let the group go on when the
        last user has left or the hook's time is nearly up."""
        if self.imds is None or self.lifecycle_done or self.opts.instance_id is None:
            return
        if not self.terminating and self.imds.terminating():
            self.terminating = self.draining = True
            self.terminating_since = time.monotonic()
            log.warning("termination notice: draining")
        if not self.terminating or not (self.opts.asg_name and self.opts.lifecycle_hook):
            return
        now = time.monotonic()
        max_drain = self.opts.max_drain or self.opts.lifecycle_timeout
        overdue = now - self.terminating_since > max_drain - 60
        hook = (self.opts.asg_name, self.opts.lifecycle_hook, self.opts.instance_id,
                self.opts.region)  # fmt: skip
        if self.active_peers == 0 or overdue:
            complete_lifecycle_action(*hook)
            self.lifecycle_done = True
            log.info("lifecycle action completed (%s)", "empty" if not overdue else "deadline")
        elif now - max(self.hook_heartbeat_at, self.terminating_since) > (
            self.opts.lifecycle_timeout / 2
        ):
            try:
                record_lifecycle_heartbeat(*hook)  # users still here: keep the hook open
                self.hook_heartbeat_at = now
            except Exception as exc:  # botocore's errors; retried next cycle
                log.warning("lifecycle heartbeat failed (%s): retry", type(exc).__name__)

    def signal_ready(self) -> None:
        """Registered and first sync applied: let the group put us in service. Until
        then the launch hook holds the instance, and abandons it at its timeout."""
        if self.ready_done or self.version is None:
            return
        if not (self.opts.asg_name and self.opts.launch_hook):
            self.ready_done = True
            return
        try:
            complete_lifecycle_action(self.opts.asg_name, self.opts.launch_hook,
                                      self.opts.instance_id, self.opts.region)  # fmt: skip
            log.info("ready: launch hook completed")
        except Exception as exc:  # botocore's errors; retried next cycle
            if not no_active_action(exc):
                fault = aws_fault(exc, "complete_lifecycle_action (launch)")
                self.metrics.faults.labels(fault.dependency, fault.kind).inc()
                log.warning("%s: retry next cycle", sanitize(fault))
                return
            log.info("ready: no launch hook pending")
        self.ready_done = True

    def cycle(self) -> float:
        """One round; returns how long to wait before the next. Never raises: every
        failure is counted, logged as one line, and retried with jittered backoff."""
        delay = self._retired_round() if self.retired else self._sync_round()
        self._terminations()
        return delay

    def _retire(self) -> float:
        """The control plane deleted our record for good ("retired": a revoked node):
        forget every peer and stop syncing; the next round's scan empties the interface.
        The agent stays up (metrics, the termination hook) and never adds a peer again."""
        if not self.retired:
            log.error("this node was retired (its record deleted): removing every peer, "
                      "no more syncs")  # fmt: skip
        with self.peers_lock:
            self.retired = self.draining = True
            self.live = PeerTable()
        if self.poller:
            self.poller.active = False
        self.last_scan = 0.0
        self.metrics.retired.set(1)
        self.metrics.draining.set(1)
        self.metrics.syncs.labels("retired").inc()
        return 0.0

    def _retired_round(self) -> float:
        """Retired: no call to the control plane; the scan keeps the interface empty."""
        try:
            if time.monotonic() - self.last_scan >= self.opts.scan_interval:
                self.scan()
        except Exception as exc:  # the interface: counted, retried
            return self._failed(Fault("wireguard", "error", type(exc).__name__))
        return min(self.interval, self.opts.scan_interval)

    def _sync_round(self) -> float:
        try:
            if not self.public_key:
                self.ensure_key()
            if self.node_id is None:
                self.register()
            if time.monotonic() - self.last_scan >= self.opts.scan_interval:
                self.scan()
            latest = self.heartbeat()  # idle cycle: this call only
            if not self.polling and (self.version is None or latest != self.version):
                self.sync()  # a control plane without long-polls (or --long-poll 0)
            self.signal_ready()
        except Unauthorized:
            if self.node_id is not None:  # credential refused (record gone?): register again
                log.warning("control plane refuses our node credential: registering again")
                self.node_id = self.version = None
                self.metrics.faults.labels("control_plane", "credential_refused").inc()
                return self.interval
            if not self.unauthorized:
                log.error("control plane refuses our token: sync stopped, peers kept")
            self.unauthorized = True
            self.metrics.unauthorized.set(1)
            self.metrics.syncs.labels("unauthorized").inc()
            return self.opts.backoff_max
        except Refused as exc:
            if exc.retired:
                return self._retire()
            if not self.refused:
                log.error("registration refused (%s): this instance needs replacing; "
                          "peers kept", sanitize(exc))  # fmt: skip
            self.refused = self.unauthorized = True
            self.metrics.unauthorized.set(1)
            self.metrics.syncs.labels("refused").inc()
            return self.opts.backoff_max
        except NotFound:  # record deleted, database restored: register again, resync
            self.node_id = self.version = None
            return self._failed(Fault("control_plane", "not_found", "node unknown, re-register"))
        except Fault as fault:
            return self._failed(fault)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            return self._failed(Fault("wireguard", "error", type(exc).__name__))
        except Exception as exc:  # the agent outlives its own bugs too
            return self._failed(Fault("agent", "internal", _where(exc)))
        finally:
            self._count_bytes()
        if self.unauthorized:
            log.info("token accepted again: sync resumed")
        self.unauthorized = self.refused = False
        self.metrics.unauthorized.set(0)
        self.failures = 0
        return self.interval * random.uniform(0.9, 1.1)  # noqa: S311 - jitter

    def _failed(self, fault: Fault) -> float:
        self.failures += 1
        self.metrics.syncs.labels("error").inc()
        self.metrics.faults.labels(fault.dependency, fault.kind).inc()
        cap = min(self.opts.backoff_max, self.interval * 2 ** min(self.failures, 16))
        delay = random.uniform(0, cap)  # noqa: S311 - jitter (full-jitter backoff)
        log.warning("%s: peers kept, retry in %.1f s", sanitize(fault), delay)
        return delay

    def _terminations(self) -> None:
        """The AWS notice, apart from the sync: an IMDS or AWS failure is counted and
        retried next cycle, and delays nothing else."""
        try:
            self.watch_termination()
        except Fault as fault:
            self.metrics.faults.labels(fault.dependency, fault.kind).inc()
            log.warning("%s: retry next cycle", sanitize(fault))
        except Exception as exc:
            if type(exc).__module__.startswith("botocore"):
                fault = aws_fault(exc, "complete_lifecycle_action")
            else:
                fault = Fault("agent", "internal", f"termination check: {_where(exc)}")
            self.metrics.faults.labels(fault.dependency, fault.kind).inc()
            log.warning("%s: retry next cycle", sanitize(fault))

    @property
    def polling(self) -> bool:
        """A long-poll thread syncs (the heartbeat then only reports)."""
        return self.poller is not None and self.poller.active

    def _count_bytes(self) -> None:
        sent, received = self.api.bytes_sent, self.api.bytes_received
        self.metrics.api_bytes.labels("sent").inc(sent - self._bytes_seen[0])
        self.metrics.api_bytes.labels("received").inc(received - self._bytes_seen[1])
        self._bytes_seen = (sent, received)

    def run(self, stop: threading.Event) -> None:
        if self.opts.long_poll_s > 0:
            self.poller = peersync.Poller(self, self.api.twin(self.opts.long_poll_s),
                                          self.opts.long_poll_s)  # fmt: skip
            self.poller.start(stop)
        while not stop.is_set():
            stop.wait(self.cycle())


def _where(exc: BaseException) -> str:
    """The exception's type and innermost source line (no values: no peer data)."""
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    return (
        f"{type(exc).__name__} at {Path(last.filename).name}:{last.lineno}"
        if last
        else type(exc).__name__
    )
