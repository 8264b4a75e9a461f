"""HAProxy (Debian's ``haproxy``) in front of several control-plane replicas: one URL for
agents, the canary, the reaper and ``idra nodes`` (ARCHITECTURE §9).

TCP mode: TLS stays end to end between the client and a replica (HAProxy holds no key),
and a client's kept-alive connection stays on one replica. Every replica's ``/healthz``
is checked twice a second; two failures take it out (and close the connections it
held, so a held long-poll is retried at once on a healthy replica), two successes bring
it back. A replica whose change listener is down answers 503 there too.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import time
from pathlib import Path

CHECK_INTERVAL_MS = 500


def config(listen: str, replicas: list[str], tls: bool) -> str:
    """An ``haproxy.cfg``: ``listen`` and each replica as ``HOST:PORT``. With ``tls``
    the health check speaks TLS to the replica (it reads a status code only, so the
    replica's certificate is not verified for the check; clients verify it)."""
    check = "check-ssl verify none " if tls else ""
    servers = "\n".join(
        f"    server replica{i} {address} check {check}".rstrip()
        for i, address in enumerate(replicas, 1)
    )
    return f"""global
    maxconn 4000
{_unprivileged()}

defaults
    mode tcp
    timeout connect 2s
    # above the longest long-poll (60 s) and the agent's request timeout
    timeout client 90s
    timeout server 90s
    timeout check 2s
    # a refused connection (a replica just died) is retried on another replica at once
    retries 2
    option redispatch 1

frontend api
    bind {listen}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter {CHECK_INTERVAL_MS}ms fall 2 rise 2 on-marked-down shutdown-sessions
{servers}
"""


def _unprivileged() -> str:
    """Drop root after binding, to the ``haproxy`` user Debian's package creates."""
    try:
        pwd.getpwnam("haproxy")
    except KeyError:
        return ""
    return "    user haproxy\n    group haproxy"


def haproxy() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        raise RuntimeError("haproxy is not installed: run ./scripts/install")
    return found


def command(cfg: Path) -> list[str]:
    """HAProxy in the foreground (``-db``), reading ``cfg``; checked before it starts."""
    subprocess.run([haproxy(), "-c", "-q", "-f", str(cfg)], check=True, capture_output=True)
    return [haproxy(), "-db", "-f", str(cfg)]


def wait_listening(host: str, port: int, process: subprocess.Popen, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("haproxy did not start") from None
            time.sleep(0.05)
