"""``idra controlplane serve``: run the reference control plane with uvicorn."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import stat
from pathlib import Path
from types import FrameType

import click
import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from idra.controlplane import edge, migrations
from idra.controlplane.app import Settings, create_app
from idra.controlplane.database import BadDatabaseUrl, create_engine, parse_url
from idra.controlplane.fanout import PgNotifier
from idra.controlplane.identity import ACCOUNT, REGION, Verifier, load_certs
from idra.controlplane.notify import ChangeNotifier
from idra.controlplane.store import Pool, Store
from node_daemon.logsetup import line


class BadInput(click.ClickException):
    exit_code = 2


def _read_token(path: Path, kind: str) -> str:
    """The token in ``path``, which only its owner may read (no group or other bits)."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        raise BadInput(f"--{kind}-token-file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise BadInput(
            f"--{kind}-token-file {path}: readable by group or others (mode "
            f"{stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    if len(token) < 16:
        raise BadInput(f"--{kind}-token-file {path}: token shorter than 16 characters")
    return token


def _verifier(certs: tuple[str, ...], accounts: tuple[str, ...], regions: tuple[str, ...]):
    for account in accounts:
        if not ACCOUNT.match(account):
            raise BadInput(f"--aws-account {account!r}: expected 12 digits")
    for region in regions:
        if not REGION.match(region):
            raise BadInput(f"--aws-region {region!r}: not a region name")
    if not certs:
        return None
    if not accounts:
        raise BadInput("--iid-cert-file needs at least one --aws-account")
    try:
        trusted = [cert for spec in certs for cert in load_certs(spec)]
    except ValueError as exc:
        raise BadInput(f"--iid-cert-file {exc}") from None
    if not trusted:
        raise BadInput("--iid-cert-file: no certificate found")
    return Verifier(trusted, frozenset(accounts), frozenset(regions))


@click.group()
def controlplane() -> None:
    """The reference control plane (node API v1)."""


VERSION_SQL = "SELECT value FROM counters WHERE name = 'version'"  # the fallback poll
DATABASE_HELP = "sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB."


def _database(db: Path | None, database_url: str | None) -> tuple[str | Path, str]:
    """The database to use (``--db PATH`` is short for a SQLite URL) and its flag."""
    if (db is None) == (database_url is None):
        raise BadInput("give exactly one of --db PATH and --database-url URL")
    flag = "--db" if db is not None else "--database-url"
    try:
        url = parse_url(db if db is not None else database_url)
    except BadDatabaseUrl as exc:
        raise BadInput(f"--database-url: {exc}") from None
    if url.get_backend_name() == "sqlite":
        path = Path(url.database)
        if not path.parent.is_dir():
            raise BadInput(f"{flag} {path}: folder {path.parent} does not exist")
        return path, flag
    return database_url, flag


@controlplane.command()
@click.option("--database-url", help=DATABASE_HELP)
def migrate(database_url: str) -> None:
    """Bring the database's schema to this release's (once, under a lock: safe while
    other replicas start). Old and new releases both run on the migrated schema."""
    if not database_url:
        raise BadInput("--database-url is required")
    database, _ = _database(None, database_url)
    try:
        engine = create_engine(parse_url(database))
        before, after = migrations.upgrade(engine)
    except migrations.SchemaError as exc:
        raise BadInput(f"--database-url: {exc}") from None
    except SQLAlchemyError as exc:
        raise click.ClickException(f"--database-url: {_reason(exc)}") from None
    engine.dispose()
    if before == after:
        click.echo(f"schema already at revision {after}")
    else:
        click.echo(f"schema migrated from {before or 'empty'} to revision {after}")


def _reason(exc: SQLAlchemyError) -> str:
    """One line about a database error (no URL, no password)."""
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


@controlplane.command()
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), help="SQLite file (a shorthand)."
)
@click.option("--database-url", help=DATABASE_HELP)
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT")
@click.option("--node-token-file", type=click.Path(path_type=Path), required=True)
@click.option("--operator-token-file", type=click.Path(path_type=Path), required=True)
@click.option("--client-token-file", type=click.Path(path_type=Path), required=True)
@click.option(
    "--metrics-token-file",
    type=click.Path(path_type=Path),
    default=None,
    help="A token that can read GET /metrics and nothing else (for a Prometheus scraper).",
)
@click.option("--tls-cert", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--client-pool-v4", default="10.96.0.0/12", show_default=True)
@click.option("--client-pool-v6", default="fd49:4452:4100::/64", show_default=True)
@click.option("--heartbeat-interval", type=click.IntRange(1, 300), default=10, show_default=True)
@click.option("--agent-sha256", multiple=True, help="Released agent checksum (repeatable).")
@click.option(
    "--keep-changes",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Change-log rows kept; an older 'since' gets the full peer list.",
)
@click.option(
    "--change-retention",
    type=click.IntRange(min=1),
    default=3600,
    show_default=True,
    help="Seconds a change (a removed client's key) stays in the log.",
)
@click.option(
    "--iid-cert-file",
    "iid_certs",
    multiple=True,
    metavar="[REGION=]FILE",
    help="AWS certificate(s) for instance identity signatures (repeatable; PEM, may hold "
    "several). Without one, every registration is refused.",
)
@click.option("--aws-account", "accounts", multiple=True, help="Allowed account id (repeatable).")
@click.option("--aws-region", "regions", multiple=True, help="Allowed region (default: any).")
@click.option(
    "--verify-with-aws",
    is_flag=True,
    help="Before a new instance joins, confirm with the AWS API that it runs in "
    "idra-<stack>-<region> with the stack's tags (needs --stack).",
)
@click.option("--stack", default=None, help="Stack name, for --verify-with-aws.")
@click.option(
    "--header-timeout",
    type=click.FloatRange(0.1, 10),
    default=10,
    show_default=True,
    help="Seconds a client has to send a request (head and body) after connecting, or "
    "after the first byte of its next request; also the TLS handshake's limit.",
)
@click.option(
    "--keepalive-timeout",
    type=click.IntRange(1, 300),
    default=5,
    show_default=True,
    help="Seconds an idle kept-alive connection stays open.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=16),
    default=8192,
    show_default=True,
    help="Open connections at once (lowered to what the open-file limit holds).",
)
@click.option(
    "--max-connections-per-client",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Open connections from one client address (an IPv6 client: its /64).",
)
@click.option(
    "--max-long-polls",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Peer long-polls held at once, in total (and 2 per node); more get 429.",
)
@click.option(
    "--insecure-skip-aws-verify",
    "skip_aws",
    is_flag=True,
    help="Labs and tests only: no AWS check, so any instance of the allowed accounts and "
    "regions that holds NODE_TOKEN can join the pool.",
)
@click.option(
    "--allow-public-ip-range",
    "extra_ranges",
    multiple=True,
    help="Also accept public_ip in this prefix (labs and tests; default: global unicast only).",
)
def serve(
    db,
    database_url,
    listen,
    node_token_file,
    operator_token_file,
    client_token_file,
    metrics_token_file,
    tls_cert,
    tls_key,
    client_pool_v4,
    client_pool_v6,
    heartbeat_interval,
    agent_sha256,
    keep_changes,
    change_retention,
    iid_certs,
    accounts,
    regions,
    verify_with_aws,
    stack,
    header_timeout,
    keepalive_timeout,
    max_connections,
    max_connections_per_client,
    max_long_polls,
    skip_aws,
    extra_ranges,
) -> None:
    """Serve node API v1 on HOST:PORT (HTTPS with --tls-cert/--tls-key)."""
    if bool(tls_cert) != bool(tls_key):
        raise BadInput("--tls-cert and --tls-key go together")
    host, port = _listen(listen)
    if not tls_cert and not (host == "localhost" or ipaddress.ip_address(host).is_loopback):
        raise BadInput("--listen: plain HTTP only on a loopback address; give --tls-cert/--tls-key")
    if tls_cert:
        _check_tls(tls_cert, tls_key)
    database, flag = _database(db, database_url)
    try:
        pool = Pool(ipaddress.IPv4Network(client_pool_v4), ipaddress.IPv6Network(client_pool_v6))
    except ValueError as exc:
        raise BadInput(f"client pool: {exc}") from None
    tokens = {
        "node": _read_token(node_token_file, "node"),
        "operator": _read_token(operator_token_file, "operator"),
        "client": _read_token(client_token_file, "client"),
    }
    if metrics_token_file:
        tokens["metrics"] = _read_token(metrics_token_file, "metrics")
    if len(set(tokens.values())) != len(tokens):
        raise BadInput(f"the {', '.join(tokens)} tokens must all differ")
    settings = Settings(tokens, heartbeat_interval, set(agent_sha256))
    settings.max_long_polls = max_long_polls
    settings.verifier = _verifier(iid_certs, accounts, regions)
    try:
        settings.extra_public_ranges = [ipaddress.ip_network(r) for r in extra_ranges]
    except ValueError as exc:
        raise BadInput(f"--allow-public-ip-range: {exc}") from None
    if verify_with_aws:
        if not stack:
            raise BadInput("--verify-with-aws needs --stack")
        if skip_aws:
            raise BadInput("--verify-with-aws and --insecure-skip-aws-verify exclude each other")
        from idra.controlplane.aws import AwsConfirm

        settings.confirm = AwsConfirm(stack)
    elif not skip_aws:
        raise BadInput(
            "AWS verification is the default: give --verify-with-aws --stack S "
            "(or, in labs and tests only, --insecure-skip-aws-verify)"
        )
    try:
        store = Store(database, pool, keep_changes, change_retention)
    except migrations.SchemaError as exc:
        raise BadInput(f"{flag}: {exc}") from None
    except SQLAlchemyError as exc:
        raise BadInput(f"{flag}: {_reason(exc)}") from None
    if not store.sqlite:  # changes from every replica wake the long-polls held here
        store.notifier = PgNotifier(
            store.url.set(drivername="postgresql").render_as_string(hide_password=False),
            VERSION_SQL,
        )
    caps = edge.Caps(
        edge.connection_cap(max_connections, edge.raise_file_limit()), max_connections_per_client
    )
    sock = _bind(host, port, listen, caps)
    log = logging.getLogger("idra.controlplane")
    if settings.verifier is None:
        log.warning("no --iid-cert-file: every node registration will be refused")
    app = create_app(store, settings)
    app.state.registry.register(caps)
    # uvicorn has no option for it: asyncio reads this default when each TLS connection
    # starts (the handshake's limit; 60 s otherwise).
    asyncio.constants.SSL_HANDSHAKE_TIMEOUT = header_timeout
    banner = f"control plane on {'https' if tls_cert else 'http'}://{listen}"
    print(line(banner, logger="idra.controlplane", event="listening"), flush=True)
    if skip_aws:
        log.warning(
            "--insecure-skip-aws-verify: any instance of the allowed accounts and regions "
            "that holds NODE_TOKEN can join the pool (labs and tests only)"
        )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    config = uvicorn.Config(
        app,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        access_log=False,
        server_header=False,
        date_header=False,
        log_config=None,  # our handlers: --log-format and --log-level of ``idra``
        timeout_graceful_shutdown=5,
        http=edge.protocol(header_timeout, caps),
        timeout_keep_alive=keepalive_timeout,
    )
    # The socket itself, not its fd (uvicorn takes an fd for a unix socket): asyncio sets
    # TCP_NODELAY only on sockets it knows are TCP (see _bind); without it every reply
    # on a kept-alive connection waited for the client's delayed ACK, 40 ms.
    _Server(config, store.notifier).run(sockets=[sock])


class _Server(uvicorn.Server):
    """On SIGTERM/SIGINT, held long-polls answer at once (with what they have), so a
    graceful shutdown does not wait out their ``wait``."""

    def __init__(self, config: uvicorn.Config, notifier: ChangeNotifier) -> None:
        super().__init__(config)
        self.notifier = notifier

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.notifier.close()
        super().handle_exit(sig, frame)


def _listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``, ``localhost:PORT``) → (host, port)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise BadInput(f"--listen {listen!r}: expected HOST:PORT")
    if not 0 < int(port) < 65536:
        raise BadInput(f"--listen {listen!r}: port out of range (1-65535)")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise BadInput(f"--listen {listen!r}: HOST is an IP address or localhost") from None
    return host, int(port)


def _check_tls(cert: Path, key: Path) -> None:
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise BadInput(
            f"--tls-cert {cert} / --tls-key {key}: not a matching PEM pair ({reason})"
        ) from None


def _bind(host: str, port: int, listen: str, caps: edge.Caps) -> socket.socket:
    """The listening socket, bound before the server starts (a busy port is one line).
    Its protocol is named: asyncio sets TCP_NODELAY on accepted connections only then.
    It admits connections within ``caps`` (:class:`edge.ListeningSocket`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = edge.ListeningSocket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.caps = caps
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1" if host == "localhost" else host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"--listen {listen}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
