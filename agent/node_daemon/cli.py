"""``node-daemon run|sync|fetch-secret|version``. Every flag also reads ``IDRA_<FLAG>``
(``--api-url`` ← ``IDRA_API_URL``). Exit codes: 0 ok, 1 refused or failed, 2 bad input."""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

import click
import httpx

import node_daemon


def option(*decls: str, **kw):
    """A click option that also reads ``IDRA_<NAME>`` from the environment."""
    name = decls[0].lstrip("-").replace("-", "_").upper()
    return click.option(*decls, envvar=f"IDRA_{name}", show_envvar=True, **kw)


class BadInput(click.ClickException):
    exit_code = 2


@click.group()
def main() -> None:
    """IDRA exit-node agent."""


@main.command()
def version() -> None:
    """Print the agent version."""
    click.echo(node_daemon.__version__)


@main.command()
@option("--api-url", required=True, help="Control plane (https://).")
@option("--token-file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@option("--interface", default="wg0", show_default=True)
@option("--listen-port", type=click.IntRange(1, 65535), default=51820, show_default=True)
@option("--region", default=None, help="Expected region (must match the identity document).")
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
@option("--asg-name", default=None, help="Auto-scaling group, to complete its lifecycle hook.")
@option("--lifecycle-hook", default=None, help="Termination hook name.")
@option("--lifecycle-timeout", type=click.FloatRange(min=60), default=3600.0, show_default=True)
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
    asg_name,
    lifecycle_hook,
    lifecycle_timeout,
) -> None:
    """Register this node and keep its peers in step with the control plane."""
    from node_daemon.api import NodeApi, is_secure_url
    from node_daemon.aws import Imds
    from node_daemon.daemon import Agent, Options
    from node_daemon.metrics import Metrics
    from node_daemon.wg import make_driver

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s node-daemon %(levelname)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no per-request lines
    if not is_secure_url(api_url) and not (allow_http and api_url.startswith("http://")):
        raise BadInput(f"--api-url {api_url}: must be https:// (http only to loopback)")
    imds = Imds(imds_url)
    try:  # region and instance id only as the signed document says (what the CP uses)
        claims = json.loads(imds.identity()["document"])
        signed_region, instance_id = claims["region"], claims["instanceId"]
        public_ip = public_ip or imds.get("public-ipv4")
    except (httpx.HTTPError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(
            f"--imds-url {imds_url}: no instance identity ({type(exc).__name__})"
        ) from None
    if region and region != signed_region:
        raise BadInput(f"--region {region}: the instance identity says {signed_region}")
    region = signed_region
    if not public_ip:
        raise BadInput("--public-ip is needed (instance metadata has no public-ipv4)")
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
    )
    metrics = Metrics()
    try:
        metrics.serve(metrics_addr)
    except (ValueError, OSError) as exc:
        raise BadInput(str(exc)) from None
    agent = Agent(
        opts, NodeApi(api_url, token_file, ca_file), make_driver(driver, interface), metrics, imds
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.run(stop)
    logging.getLogger("node-daemon").info("stopped; the interface and its peers stay")


def interface_pools(interface: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The prefixes of the interface's own (global) addresses."""
    out = subprocess.run(
        ["ip", "-j", "addr", "show", "dev", interface], capture_output=True, text=True, check=True
    ).stdout
    return [
        ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
        for link in json.loads(out)
        for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    ]


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
    from node_daemon.peers import plan
    from node_daemon.wg import make_driver

    try:
        document = json.loads(peers_file.read_text())
        incoming, removed = document["peers"], document.get("removed", [])
        pools = [ipaddress.ip_network(p) for p in client_pool] or interface_pools(interface)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{peers_file}: {type(exc).__name__}: {exc}") from None
    except subprocess.CalledProcessError:
        raise BadInput(f"--interface {interface}: no such interface") from None
    wg = make_driver(driver, interface)
    live = {key: peer.allowed_ips for key, peer in wg.read().peers.items()}
    result = plan(incoming, removed, live, pools, full=document.get("full", True))
    wg.apply(result.upserts, result.removes)
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
@option("--region", required=True)
@option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def fetch_secret(secret_id: str, region: str, out: Path) -> None:
    """Write a Secrets Manager value to OUT (mode 0600); never print it."""
    from node_daemon.aws import SecretError, fetch_secret

    try:
        fetch_secret(secret_id, region, out)
    except SecretError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
