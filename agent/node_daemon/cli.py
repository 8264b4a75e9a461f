"""``node-daemon run|sync|fetch-secret|version`` (and ``--version``). Every flag also reads
``IDRA_<FLAG>`` (``--api-url`` ← ``IDRA_API_URL``). Exit codes: 0 ok, 1 refused or failed,
2 bad input (one line naming the flag, checked before anything is touched)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import click

import node_daemon
from node_daemon.api import MAX_PEERS, reply_cap
from node_daemon.logsetup import LOG_FORMATS, LOG_LEVELS, setup_logging
from node_daemon.oneline import OneLineGroup


def option(*decls: str, **kw):
    """A click option that also reads ``IDRA_<NAME>`` from the environment."""
    name = decls[0].lstrip("-").replace("-", "_").upper()
    return click.option(*decls, envvar=f"IDRA_{name}", show_envvar=True, **kw)


class BadInput(click.ClickException):
    exit_code = 2


def aws_region(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An AWS region name (``eu-central-1``, ``us-gov-west-1``; the stack file's rule),
    else bad input (exit 2)."""
    if value is not None and not re.fullmatch(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}", value):
        raise click.BadParameter(f"{value!r}: not an AWS region name")
    return value


@click.group(cls=OneLineGroup)
@click.version_option(node_daemon.__version__, prog_name="node-daemon")
@option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True)
@option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
def main(log_format: str, log_level: str) -> None:
    """IDRA exit-node agent."""
    setup_logging(log_format, log_level, stream=sys.stdout, name="node-daemon")


def existing_interface(interface: str, driver: str) -> str:
    """``interface`` if ``driver`` can reach it here (its UAPI socket, or a kernel interface
    in this network namespace); else bad input (exit 2)."""
    from node_daemon.wg import UAPI_DIR

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", interface) or interface in (".", ".."):
        raise BadInput(f"--interface {interface!r}: not an interface name")
    socket_path = UAPI_DIR / f"{interface}.sock"
    if driver != "kernel" and socket_path.exists():
        return interface
    if driver == "uapi":
        raise BadInput(f"--interface {interface}: no UAPI socket {socket_path}")
    try:
        socket.if_nametoindex(interface)  # this network namespace's interfaces
    except OSError:
        raise BadInput(f"--interface {interface}: no such interface on this host") from None
    return interface


def check_run_inputs(
    api_url: str, allow_http: bool, token_file: Path, public_ip: str | None,
    metrics_addr: str, state_dir: Path,
) -> None:  # fmt: skip
    """The flags ``run`` can check without touching the interface or the network; the
    first mistake is bad input (exit 2, one line naming the flag)."""
    import httpx

    from node_daemon.api import is_secure_url
    from node_daemon.metrics import parse_address

    try:
        url = httpx.URL(api_url)
    except httpx.InvalidURL:
        raise BadInput(f"--api-url {api_url!r}: not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise BadInput(f"--api-url {api_url}: not an https:// URL")
    if not is_secure_url(api_url) and not (allow_http and url.scheme == "http"):
        raise BadInput(
            f"--api-url {api_url}: must be https:// (http only to loopback or with --allow-http)"
        )
    try:
        token = token_file.read_text().strip()
    except FileNotFoundError:
        raise BadInput(f"--token-file {token_file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise BadInput(f"--token-file {token_file}: unreadable ({reason})") from None
    if not token:
        raise BadInput(f"--token-file {token_file}: empty")
    if public_ip is not None:
        try:
            address = ipaddress.ip_address(public_ip)
        except ValueError:
            raise BadInput(f"--public-ip {public_ip!r}: not an IP address") from None
        if address.is_unspecified or address.is_multicast or address.is_loopback:
            raise BadInput(f"--public-ip {public_ip}: not a unicast address")
    try:
        parse_address(metrics_addr)
    except ValueError as exc:
        raise BadInput(f"--metrics-addr {metrics_addr}: {exc}") from None
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        writable = os.access(state_dir, os.W_OK | os.X_OK)
    except OSError as exc:
        raise BadInput(f"--state-dir {state_dir}: {exc.strerror or type(exc).__name__}") from None
    if not writable:
        raise BadInput(f"--state-dir {state_dir}: not writable")


@main.command()
def version() -> None:
    """Print the agent version."""
    click.echo(node_daemon.__version__)


@main.command()
@option("--api-url", required=True, help="Control plane (https://).")
@option("--token-file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@option("--interface", default="wg0", show_default=True)
@option("--listen-port", type=click.IntRange(1, 65535), default=51820, show_default=True)
@option("--region", default=None, callback=aws_region,
        help="Expected region (must match the identity document).")  # fmt: skip
@option("--public-ip", default=None, help="Default: from instance metadata.")
@option("--metrics-addr", default="127.0.0.1:9586", show_default=True)
@option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/run/node-daemon"),
    show_default=True,
)
@option(
    "--driver", type=click.Choice(["auto", "uapi", "kernel"]), default="auto", show_default=True
)
@option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@option("--allow-http", is_flag=True, help="Allow plain http to a non-loopback control plane.")
@option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.2),
    default=None,
    help="Seconds (default: the control plane's).",
)
@option("--backoff-max", type=click.FloatRange(min=0.2), default=300.0, show_default=True)
@option("--scan-interval", type=click.FloatRange(min=0.2), default=60.0, show_default=True)
@option(
    "--sysctl-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/etc/sysctl.d/90-idra.conf"),
    show_default=True,
)
@option(
    "--imds-url",
    default="http://169.254.169.254",
    show_default=True,
    help="IMDSv2: the signed identity document registration needs, region, instance id.",
)
@option(
    "--imds-deadline",
    type=click.FloatRange(min=0.1),
    default=3.0,
    show_default=True,
    help="Seconds an instance-metadata call may take in all.",
)
@option("--asg-name", default=None, help="Auto-scaling group, to complete its lifecycle hook.")
@option("--lifecycle-hook", default=None, help="Termination hook name.")
@option("--lifecycle-timeout", type=click.FloatRange(min=60), default=3600.0, show_default=True)
@option(
    "--request-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds per connect/read/write of a control-plane call.",
)
@option(
    "--request-deadline",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds a control-plane call may take in all (a trickling reply is cut).",
)
@option(
    "--max-reply-bytes",
    type=click.IntRange(min=1024),
    default=None,
    help="Largest control-plane reply read [default: 256 bytes a peer of --max-peers].",
)
@option(
    "--max-peers",
    type=click.IntRange(min=1),
    default=MAX_PEERS,
    show_default=True,
    help="Most peers on the interface and in one full list (kernel WireGuard's limit, 2^20).",
)
@option(
    "--long-poll",
    type=click.FloatRange(min=0, max=60),
    default=55.0,
    show_default=True,
    help="Seconds one held peers request may wait for a change (0: sync on the heartbeat).",
)
@option(
    "--page-size",
    type=click.IntRange(0, 10_000),
    default=2000,
    show_default=True,
    help="Peers per page of a full list (0: ask for the whole list at once).",
)
@option("--interface-netns", default=None, help="Labs/tests: network namespace of the interface.")
@option("--launch-hook", default=None, help="Launch hook name: completed once serving.")
@option(
    "--max-drain",
    type=click.FloatRange(min=60),
    default=None,
    help="Longest self-drain on termination, seconds [default: --lifecycle-timeout].",
)
def run(
    api_url,
    token_file,
    interface,
    listen_port,
    region,
    public_ip,
    metrics_addr,
    state_dir,
    driver,
    ca_file,
    allow_http,
    heartbeat_interval,
    backoff_max,
    scan_interval,
    sysctl_file,
    imds_url,
    imds_deadline,
    asg_name,
    lifecycle_hook,
    lifecycle_timeout,
    request_timeout,
    request_deadline,
    max_reply_bytes,
    max_peers,
    interface_netns,
    launch_hook,
    max_drain,
    long_poll,
    page_size,
) -> None:
    """Register this node and keep its peers in step with the control plane.

    Runs until a signal: a failing control plane, IMDS or AWS is retried, never fatal.
    Only a misconfiguration found at start ends it (exit 2, one line)."""
    from node_daemon.api import NodeApi
    from node_daemon.aws import Imds
    from node_daemon.daemon import Agent, Options
    from node_daemon.metrics import Metrics
    from node_daemon.wg import make_driver

    check_run_inputs(api_url, allow_http, token_file, public_ip, metrics_addr, state_dir)
    if ca_file:
        try:
            ssl.create_default_context(cafile=ca_file)
        except (ssl.SSLError, OSError, ValueError):
            raise BadInput(f"--ca-file {ca_file}: not a PEM CA certificate") from None
    existing_interface(interface, driver)
    wg = make_driver(driver, interface)
    try:
        wg.read()
    except (RuntimeError, OSError) as exc:
        detail = " ".join(str(exc).split())
        raise BadInput(f"--interface {interface} ({driver}): not usable: {detail}") from None
    # identity (region and instance id as the signed document says), asked and retried
    # by the agent: an unreachable metadata service is a failing dependency, not fatal
    imds = Imds(imds_url, deadline=imds_deadline)
    instance_id = None
    opts = Options(
        interface,
        listen_port,
        region,
        public_ip,
        instance_id,
        state_dir,
        heartbeat_interval,
        backoff_max,
        scan_interval,
        sysctl_file,
        asg_name,
        lifecycle_hook,
        lifecycle_timeout,
        interface_netns,
        launch_hook,
        max_drain,
        long_poll,
        page_size,
    )
    metrics = Metrics()
    try:
        metrics.serve(metrics_addr)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BadInput(f"--metrics-addr {metrics_addr}: {reason}") from None
    api = NodeApi(api_url, token_file, ca_file, request_timeout, request_deadline,
                  max_reply_bytes or reply_cap(max_peers), max_peers)  # fmt: skip
    agent = Agent(opts, api, wg, metrics, imds)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.run(stop)
    logging.getLogger("node-daemon").info("stopped; the interface and its peers stay")


def read_peers_document(path: Path) -> tuple[list, list, bool]:
    """``peers``, ``removed`` and ``full`` of a peers document (the API's reply), or bad
    input naming ``--peers`` (exit 2, one line)."""
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BadInput(f"--peers {path}: no such file") from None
    except OSError as exc:
        raise BadInput(f"--peers {path}: {exc.strerror or type(exc).__name__}") from None
    except (ValueError, RecursionError):
        raise BadInput(f"--peers {path}: not JSON") from None
    if not isinstance(document, dict):
        raise BadInput(f"--peers {path}: not a peers document (a JSON object)")
    incoming, removed = document.get("peers"), document.get("removed", [])
    if not isinstance(incoming, list):
        raise BadInput(f"--peers {path}: no 'peers' list")
    if not isinstance(removed, list):
        raise BadInput(f"--peers {path}: 'removed' is not a list")
    return incoming, removed, document.get("full", True) is not False


@main.command()
@option("--interface", default="wg0", show_default=True)
@option(
    "--peers",
    "peers_file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A peers document (the API's peers reply).",
)
@option("--client-pool", multiple=True, help="Pool prefix (default: the interface's own).")
@option("--driver", type=click.Choice(["auto", "uapi", "kernel"]), default="auto")
def sync(interface: str, peers_file: Path, client_pool: tuple[str, ...], driver: str) -> None:
    """Apply a peers document once; print what changed. Exit 1 if a peer was rejected."""
    from node_daemon.host import interface_addresses
    from node_daemon.peers import plan, reserved_hosts
    from node_daemon.wg import make_driver

    incoming, removed, full = read_peers_document(peers_file)
    try:
        pools = [ipaddress.ip_network(p) for p in client_pool]
    except ValueError as exc:
        raise BadInput(f"--client-pool: {exc}") from None
    existing_interface(interface, driver)
    try:
        own = interface_addresses(interface)
    except (subprocess.CalledProcessError, OSError, ValueError):
        raise BadInput(f"--interface {interface}: no such interface") from None
    pools = pools or [a.network for a in own]
    wg = make_driver(driver, interface)
    try:
        live = {key: peer.allowed_ips for key, peer in wg.read().peers.items()}
        own_key = wg.public_key() if wg.read().has_private_key else None
        reserved = reserved_hosts(pools, [str(a.ip) for a in own])
        result = plan(incoming, removed, live, pools, full=full, own_key=own_key,
                      reserved=reserved)  # fmt: skip
        wg.apply(result.upserts, result.removes)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        detail = " ".join(str(exc).split())
        raise click.ClickException(f"--interface {interface} ({driver}): {detail}") from None
    rejected = sum(result.rejected.values())
    click.echo(
        f"added {result.added} updated {result.updated} removed {len(result.removes)} "
        f"unchanged {result.unchanged} rejected {rejected}"
    )
    for reason, count in sorted(result.rejected.items()):
        click.echo(f"  rejected {count}: {reason}", err=True)
    if rejected:
        sys.exit(1)


@main.command("fetch-secret")
@option("--secret-id", required=True)
@option("--region", required=True, callback=aws_region)
@option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@option("--attempts", type=click.IntRange(1, 100), default=10, show_default=True,
        help="Tries, with exponential backoff (about 3 minutes for 10).")  # fmt: skip
def fetch_secret(secret_id: str, region: str, out: Path, attempts: int) -> None:
    """Write a Secrets Manager value to OUT (mode 0600); never print it."""
    from node_daemon.aws import SecretError, fetch_secret_with_retries

    def warn(line: str) -> None:
        click.echo(f"fetch-secret: {line}", err=True)

    try:
        fetch_secret_with_retries(secret_id, region, out, attempts, warn=warn)
    except SecretError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
