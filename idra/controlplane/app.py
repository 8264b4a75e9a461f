"""Node API v1 (ARCHITECTURE §3) plus the client calls the lab needs, on FastAPI.

Three bearer tokens: node (agents), operator (drain, node list, delete), client
(``/v1/peers``). A missing or wrong token, or one of another kind, is 401 and changes
nothing; tokens are compared in constant time. A bad body is 400 with a message.
Logs hold counts only: never a peer key or a client address.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from idra.controlplane.store import NoCapacity, NotFound, Store

log = logging.getLogger("idra.controlplane")
WgKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Register(Body):
    instance_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    public_ip: str
    public_key: WgKey
    listen_port: int = Field(ge=1, le=65535)
    region: str = Field(pattern=r"^[a-z0-9-]{1,32}$")
    agent_version: str = Field(max_length=64)

    @field_validator("public_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))


class Stats(Body):
    load1: float = Field(ge=0)
    cpu_pct: float = Field(ge=0, le=100)
    mem_pct: float = Field(ge=0, le=100)
    rx_bytes: int = Field(ge=0)
    tx_bytes: int = Field(ge=0)
    rx_bps: float = Field(ge=0)
    tx_bps: float = Field(ge=0)
    peers: int = Field(ge=0)
    active_peers: int = Field(ge=0)


class Integrity(Body):
    nftables_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    sysctl_ok: bool
    agent_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Heartbeat(Body):
    state: Literal["active", "draining"]
    peers_version: int = Field(ge=0)
    stats: Stats
    integrity: Integrity


class Drain(Body):
    id: str = Field(min_length=1, max_length=64)
    reason: Literal["blocked", "compromised", "manual", "outdated"]


class PeerRequest(Body):
    public_key: WgKey
    region: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,32}$")


@dataclass
class Settings:
    tokens: dict[str, str]  # kind → token
    heartbeat_interval_s: int = 10
    agent_sha256: set[str] = field(default_factory=set)  # released builds; empty = any


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
)


def create_app(store: Store, settings: Settings) -> FastAPI:
    app = FastAPI(title="IDRA control plane", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return JSONResponse({"detail": f"{where}: {first['msg']}"}, status_code=400)

    def token(kind: str):
        expected = settings.tokens[kind].encode()

        def check(request: Request) -> None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
                raise HTTPException(401, "unauthorized", {"WWW-Authenticate": "Bearer"})

        return Depends(check)

    node_auth, operator_auth, client_auth = token("node"), token("operator"), token("client")

    def fresh_after() -> float:
        return time.time() - 3 * settings.heartbeat_interval_s

    @app.post("/v1/nodes", status_code=201, dependencies=[node_auth])
    def register(body: Register) -> dict:
        node_id = store.register(body.model_dump())
        log.info("node registered (%d nodes)", len(store.nodes()))
        return {
            "node_id": node_id,
            "heartbeat_interval_s": settings.heartbeat_interval_s,
            "client_pool": {"ipv4": str(store.pool.ipv4), "ipv6": str(store.pool.ipv6)},
        }

    @app.get("/v1/nodes/{node_id}/peers", dependencies=[node_auth])
    def peers(node_id: str, since: Annotated[int | None, Query(ge=0)] = None) -> dict:
        try:
            return store.peers_since(node_id, since)
        except NotFound:
            raise HTTPException(404, "no such node") from None

    @app.post("/v1/nodes/{node_id}/heartbeat", dependencies=[node_auth])
    def heartbeat(node_id: str, body: Heartbeat) -> dict:
        try:
            before = store.heartbeat(node_id, body.model_dump())
        except NotFound:
            raise HTTPException(404, "no such node") from None
        if _compromised(body.integrity, before["nftables_baseline"], settings):
            store.drain(node_id, "compromised")
            log.warning("node %s drained: integrity mismatch", node_id)
        elif body.state == "draining" and before["state"] == "active":
            store.drain(node_id, "terminating")  # the node drains itself (AWS notice)
            log.info("node %s draining itself: terminating", node_id)
        node = store.node(node_id)
        return {
            "drain": node["state"] == "draining",
            "drain_reason": node["drain_reason"],
            "peers_version": store.version(),
        }

    @app.post("/node/drain", status_code=202, dependencies=[operator_auth])
    def drain(body: Drain) -> dict:
        try:
            store.drain(body.id, body.reason)
        except NotFound:
            raise HTTPException(404, "no such node") from None
        log.info("node %s draining: %s", body.id, body.reason)
        return {"id": body.id, "state": "draining"}

    @app.get("/v1/nodes", dependencies=[operator_auth])
    def nodes(state: Literal["active", "draining"] | None = None) -> dict:
        return {"nodes": [{k: n[k] for k in NODE_FIELDS} for n in store.nodes(state)]}

    @app.delete("/v1/nodes/{node_id}", status_code=204, dependencies=[operator_auth])
    def delete_node(node_id: str) -> Response:
        if not store.delete_node(node_id):
            raise HTTPException(404, "no such node")
        return Response(status_code=204)

    @app.post("/v1/peers", dependencies=[client_auth])
    def add_peer(body: PeerRequest) -> dict:
        try:
            return store.assign(body.public_key, body.region, fresh_after())
        except NoCapacity as exc:
            raise HTTPException(503, str(exc)) from None

    @app.delete("/v1/peers/{public_key:path}", status_code=204, dependencies=[client_auth])
    def remove_peer(public_key: str) -> Response:
        if not store.remove_peer(public_key):
            raise HTTPException(404, "no such peer")
        return Response(status_code=204)

    return app


def _compromised(integrity: Integrity, baseline: str, settings: Settings) -> bool:
    """Ruleset drifted from the node's first report, sysctl drifted, or unknown agent."""
    unknown_agent = (
        bool(settings.agent_sha256) and integrity.agent_sha256 not in settings.agent_sha256
    )
    return integrity.nftables_sha256 != baseline or not integrity.sysctl_ok or unknown_agent
