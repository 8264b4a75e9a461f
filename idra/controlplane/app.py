"""Node API v1 (ARCHITECTURE §3, §3a) plus the client calls the lab needs, on FastAPI.

Who may call what is in :mod:`idra.controlplane.auth` (checked before the body is read,
bodies capped at 64 KiB): NODE_TOKEN registers and nothing else; a registration proves
its EC2 instance with a signed identity document and gets a per-node credential that
works only on its own ``/v1/nodes/{id}/…``; operator and client tokens for the rest.
A missing or wrong credential is 401 and changes nothing. A bad body is 400 with a
message; integers are bounded and NaN/Infinity refused. Logs hold counts and node ids
only: never a peer key, a client address or a credential.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, field_validator

from idra.controlplane import auth, edge, longpoll, observability
from idra.controlplane.auth import requires
from idra.controlplane.identity import Identity, IdentityRefused, Verifier
from idra.controlplane.longpoll import CURSOR, MAX_WAIT_S
from idra.controlplane.store import MAX_PAGE, PAGE, NoCapacity, NotFound, Refused, Store

log = logging.getLogger("idra.controlplane")
WgKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]
CREDENTIAL = r"^[A-Za-z0-9_-]{43,64}$"  # ≥ 256 bits, URL-safe base64 (secrets.token_urlsafe(32))
MAX_INT = 2**53  # every integer fits SQLite (2^63) and a JSON double exactly
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
Rate = Annotated[float, Field(ge=0, le=1e15)]
NODE_ID = r"^[A-Za-z0-9_.:-]{1,64}$"
LEASE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
HOLDER = r"^[\x21-\x7e]{1,128}$"  # printable ASCII, no spaces (hostname:pid)
MAX_LISTED = 2000  # canary confirmations in one PUT (the 64 KiB body holds ~800 anyway)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SignedIdentity(Body):
    document: str = Field(min_length=2, max_length=4096)
    signature: str = Field(min_length=8, max_length=2048)


class Register(Body):
    identity: SignedIdentity
    public_ip: str = Field(max_length=45)
    public_key: WgKey
    listen_port: int = Field(ge=1, le=65535)
    agent_version: str = Field(pattern=r"^[\x21-\x7e]{1,64}$")

    @field_validator("public_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))


class Stats(Body):
    load1: float = Field(ge=0, le=1e6)
    cpu_pct: float = Field(ge=0, le=100)
    mem_pct: float = Field(ge=0, le=100)
    rx_bytes: Count
    tx_bytes: Count
    rx_bps: Rate
    tx_bps: Rate
    peers: Count
    active_peers: Count


class Integrity(Body):
    nftables_sha256: str | None = Field(pattern=r"^[0-9a-f]{64}$")  # None: unknown
    sysctl_ok: StrictBool | None  # None: unknown
    agent_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    root_readonly: StrictBool | None = None  # absent: an agent from before it


class Heartbeat(Body):
    state: Literal["active", "draining"]
    peers_version: Count
    stats: Stats
    integrity: Integrity


class Drain(Body):
    id: str = Field(pattern=NODE_ID)
    reason: Literal["blocked", "compromised", "manual", "outdated", "scale_in"]


class PeerRequest(Body):
    public_key: WgKey
    region: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,32}$")


class CanaryRequest(Body):
    public_key: WgKey


class LeaseRequest(Body):
    holder: str = Field(pattern=HOLDER)
    seconds: float = Field(ge=1, le=3600)


class CanaryConfirmations(Body):
    listed_runs: dict[
        Annotated[str, StringConstraints(pattern=NODE_ID)],
        Annotated[int, Field(ge=1, le=1_000_000)],
    ] = Field(max_length=MAX_LISTED)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Settings:
    tokens: dict[str, str]  # kind → token
    heartbeat_interval_s: int = 10
    agent_sha256: set[str] = field(default_factory=set)  # released builds; empty = any
    verifier: Verifier | None = None  # None: no trusted certificate, every registration 403
    # --verify-with-aws: (identity, public_ip) → why it may not join, or None
    confirm: Callable[[Identity, str], str | None] | None = None
    # besides global unicast, public_ip may lie in these (labs and tests only)
    extra_public_ranges: list[Network] = field(default_factory=list)
    max_long_polls: int = 4096  # held at once, in total (and longpoll.PER_NODE per node)


class AwsUnavailable(RuntimeError):
    """The AWS check could not be made (API error): the node retries later."""


def public_ip_ok(value: str, settings: Settings) -> bool:
    address = ipaddress.ip_address(value)
    if any(address in net for net in settings.extra_public_ranges):
        return True
    return address.is_global and not address.is_multicast


NODE_FIELDS = (
    "id",
    "instance_id",
    "public_ip",
    "region",
    "state",
    "active_peers",
    "drain_reason",
    "drain_started_at",
    "last_heartbeat_at",
    "agent_version",
    "identity_refusals",
    "identity_refused_at",
    "registered_at",
)


def create_app(store: Store, settings: Settings) -> FastAPI:
    app = FastAPI(title="IDRA control plane", docs_url=None, redoc_url=None)
    app.add_middleware(
        auth.Guard,
        routes=app.router.routes,
        tokens=settings.tokens,
        node_credential_ok=store.credential_ok,
    )
    app.add_middleware(edge.MethodGate)  # outside the Guard: junk methods end first
    holds = longpoll.Holds(settings.max_long_polls)

    def schema() -> dict:
        if not app.openapi_schema:
            app.openapi_schema = get_openapi(title=app.title, version="1", routes=app.routes)
            for operations in app.openapi_schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)  # bad input is our 400
            components = app.openapi_schema.setdefault("components", {})
            components["securitySchemes"] = auth.security_schemes()
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return JSONResponse({"detail": f"{where}: {first['msg']}"}, status_code=400)

    observability.install(app, store)

    canary_v4, canary_v6 = store.pool.canary_networks()

    def fresh_after() -> float:
        return time.time() - 3 * settings.heartbeat_interval_s

    @app.post("/v1/nodes", status_code=201, **requires("node-token", 400, 403, 409, 503))
    def register(
        body: Register,
        x_node_credential: Annotated[str | None, Header(pattern=CREDENTIAL)] = None,
    ) -> dict:
        """Bind the instance on first use (to the agent's ``X-Node-Credential`` when it
        sends one), or return its node again when it presents that credential."""
        if settings.verifier is None:
            raise HTTPException(403, "identity refused: no trusted certificate configured")
        try:
            identity = settings.verifier.verify(body.identity.document, body.identity.signature)
        except IdentityRefused as exc:
            log.warning("registration refused: %s", exc)
            raise HTTPException(403, f"identity refused: {exc}") from None
        if not public_ip_ok(body.public_ip, settings):
            raise HTTPException(400, "public_ip: not a global unicast address")
        if settings.confirm and store.needs_confirmation(identity.instance_id, body.public_ip):
            try:
                problem = settings.confirm(identity, body.public_ip)
            except AwsUnavailable as exc:
                raise HTTPException(503, f"AWS check unavailable: {exc}") from None
            if problem:
                log.warning("registration of %s refused by AWS: %s", identity.instance_id, problem)
                raise HTTPException(403, f"identity refused: {problem}")
        fields = body.model_dump(exclude={"identity"})
        try:
            node_id, credential = store.register(
                identity.instance_id, identity.region, identity.account_id, fields,
                x_node_credential,
            )  # fmt: skip
        except Refused as exc:
            log.warning("registration of %s refused: %s", identity.instance_id, exc)
            raise HTTPException(409, str(exc)) from None
        log.info("node registered (%d nodes)", len(store.nodes()))
        return {
            "node_id": node_id,
            "node_credential": credential,
            "heartbeat_interval_s": settings.heartbeat_interval_s,
            "client_pool": {"ipv4": str(store.pool.ipv4), "ipv6": str(store.pool.ipv6)},
            "canary_pool": {"ipv4": str(canary_v4), "ipv6": str(canary_v6)},
        }

    @app.get("/v1/nodes/{node_id}/peers", **requires("node", 400, 429))
    async def peers(
        node_id: str,
        since: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
        wait: Annotated[float | None, Query(ge=0, le=MAX_INT)] = None,
        cursor: Annotated[str | None, Query(pattern=CURSOR)] = None,
        limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE)] = None,
    ) -> dict:
        """Changes since ``since`` (long-poll with ``wait``), or the full list (paged
        with ``limit``; ``cursor`` from the previous page). Async: a held request
        costs no thread, so held long-polls never hold up heartbeats."""
        try:
            if cursor is not None:
                version, after = (int(part) for part in cursor.split("."))
                return await run_in_threadpool(
                    store.full_page, node_id, version, after, limit or PAGE
                )
            if since is None or not wait:
                return await run_in_threadpool(store.peers_since, node_id, since, limit)
            wait = min(wait, MAX_WAIT_S)
            return await longpoll.changes(store, node_id, since, wait, limit, holds)
        except NotFound:
            raise HTTPException(404, "no such node") from None
        except longpoll.TooMany as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": "5"}) from None

    @app.post("/v1/nodes/{node_id}/heartbeat", **requires("node", 400))
    def heartbeat(node_id: str, body: Heartbeat) -> dict:
        try:
            before = store.heartbeat(node_id, body.model_dump())
        except NotFound:
            raise HTTPException(404, "no such node") from None
        unlocked = _root_unlocked(body.integrity, before["root_readonly_baseline"])
        if unlocked or _compromised(body.integrity, before["nftables_baseline"], settings):
            store.drain(node_id, "compromised")
            log.warning("node %s drained: integrity mismatch", node_id,
                        extra={"event": "node.compromised", "node_id": node_id})  # fmt: skip
        elif body.state == "draining" and before["state"] == "active":
            store.drain(node_id, "terminating")  # the node drains itself (AWS notice)
            log.info("node %s draining itself: terminating", node_id,
                     extra={"event": "node.terminating", "node_id": node_id})  # fmt: skip
        node = store.node(node_id)
        return {
            "drain": node["state"] == "draining",
            "drain_reason": node["drain_reason"],
            "peers_version": store.version(),
        }

    @app.post("/node/drain", status_code=202, **requires("operator", 400, 404))
    def drain(body: Drain) -> dict:
        try:
            store.drain(body.id, body.reason)
        except NotFound:
            raise HTTPException(404, "no such node") from None
        log.info("node %s draining: %s", body.id, body.reason,
                 extra={"event": "node.drain", "node_id": body.id})  # fmt: skip
        return {"id": body.id, "state": "draining"}

    @app.get("/v1/nodes", **requires("operator", 400))
    def nodes(state: Literal["active", "draining"] | None = None) -> dict:
        return {"nodes": [_listed(n) for n in store.nodes(state)]}

    @app.get("/v1/nodes/{node_id}", **requires("operator", 404))
    def node(node_id: str) -> dict:
        """One node, as an element of ``GET /v1/nodes``."""
        try:
            return _listed(store.node(node_id))
        except NotFound:
            raise HTTPException(404, "no such node") from None

    @app.delete("/v1/nodes/{node_id}", status_code=204, **requires("operator", 404, 409))
    def delete_node(node_id: str, terminated: bool = False) -> Response:
        """Forget a node whose instance is gone; its instance is retired. A node that
        heartbeated within three intervals still runs: 409, unless the caller says it
        terminated the instance (``terminated=true``: the reaper, ``nodes delete --force``)."""
        try:
            last = store.node(node_id)["last_heartbeat_at"]
        except NotFound:
            raise HTTPException(404, "no such node") from None
        if not terminated and last is not None and last >= fresh_after():
            raise HTTPException(
                409, f"node still runs (heartbeat {max(0, round(time.time() - last))} s ago): "
                "terminate its instance first",
            )  # fmt: skip
        if not store.delete_node(node_id):
            raise HTTPException(404, "no such node")
        log.info("node %s deleted%s", node_id, " (instance terminated)" if terminated else "")
        return Response(status_code=204)

    @app.post("/v1/nodes/{node_id}/canary", **requires("operator", 400, 404, 409, 503))
    def set_canary(node_id: str, body: CanaryRequest) -> dict:
        """The canary's own peer on this node, at an address of the canary block."""
        try:
            reply = store.set_canary(node_id, body.public_key)
        except NotFound:
            raise HTTPException(404, "no such node") from None
        except Refused as exc:
            raise HTTPException(409, str(exc)) from None
        except NoCapacity as exc:
            raise HTTPException(503, str(exc)) from None
        log.info("canary peer set on node %s", node_id)
        return reply

    @app.delete("/v1/nodes/{node_id}/canary", status_code=204, **requires("operator", 404))
    def remove_canary(node_id: str) -> Response:
        try:
            store.remove_canary(node_id)
        except NotFound:
            raise HTTPException(404, "no such node") from None
        return Response(status_code=204)

    @app.post("/v1/peers", **requires("client", 400, 409, 503))
    def add_peer(body: PeerRequest) -> dict:
        try:
            return store.assign(body.public_key, body.region, fresh_after())
        except NoCapacity as exc:
            raise HTTPException(503, str(exc)) from None
        except Refused as exc:
            raise HTTPException(409, str(exc)) from None

    @app.delete("/v1/peers/{public_key:path}", status_code=204, **requires("client", 404))
    def remove_peer(public_key: str) -> Response:
        if not store.remove_peer(public_key):
            raise HTTPException(404, "no such peer")
        return Response(status_code=204)

    @app.put("/v1/ops/lease/{name}", **requires("operator", 400, 409))
    def take_lease(
        name: Annotated[str, Path(pattern=LEASE_NAME)], body: LeaseRequest
    ) -> JSONResponse:
        """Take or renew the ops loop's lease for ``seconds`` (by the database's clock):
        200 when the caller holds it now, 409 while another holder's lease runs."""
        taken, holder, expires_at = store.take_lease(name, body.holder, body.seconds)
        reply = {"holder": holder, "expires_at": expires_at}
        if not taken:
            reply["detail"] = f"lease {name} held by {holder}"
        return JSONResponse(reply, status_code=200 if taken else 409)

    @app.delete("/v1/ops/lease/{name}", status_code=204, **requires("operator", 400, 409))
    def release_lease(
        name: Annotated[str, Path(pattern=LEASE_NAME)],
        holder: Annotated[str, Query(pattern=HOLDER)],
    ) -> Response:
        """Give the lease up if ``holder`` holds it (204; also when nobody does); 409
        while another holder's lease runs (left as it is)."""
        other = store.release_lease(name, holder)
        if other is None:
            return Response(status_code=204)
        return JSONResponse({"detail": f"lease {name} held by {other[0]}", "holder": other[0],
                             "expires_at": other[1]}, status_code=409)  # fmt: skip

    @app.get("/v1/ops/canary", **requires("operator"))
    def canary_confirmations() -> dict:
        """The canary's confirmations: node id → runs in a row that listed it."""
        return {"listed_runs": store.listed_runs()}

    @app.put("/v1/ops/canary", **requires("operator", 400))
    def save_canary_confirmations(body: CanaryConfirmations) -> dict:
        """Replace the canary's confirmations; unknown nodes are dropped (the reply says
        what is stored)."""
        return {"listed_runs": store.set_listed_runs(body.listed_runs)}

    return app


def _root_unlocked(integrity: Integrity, was_readonly: int) -> bool:
    """The root was reported read-only before and is not now (absent counts as not)."""
    return bool(was_readonly) and integrity.root_readonly is not True


def _listed(node: dict) -> dict:
    """A node as the operator sees it; ``peers`` is its last reported count."""
    return {k: node[k] for k in NODE_FIELDS} | {
        "peers": json.loads(node["stats"] or "{}").get("peers")
    }


def _compromised(integrity: Integrity, baseline: str, settings: Settings) -> bool:
    """Ruleset drifted from the node's first report, sysctl drifted, or unknown agent."""
    unknown_agent = (
        bool(settings.agent_sha256) and integrity.agent_sha256 not in settings.agent_sha256
    )
    ruleset_moved = integrity.nftables_sha256 not in (None, baseline)  # unknown: no verdict
    return ruleset_moved or integrity.sysctl_ok is False or unknown_agent
