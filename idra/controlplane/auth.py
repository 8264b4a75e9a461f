"""Who may call what, checked before a request body is read (ARCHITECTURE §3, §3a).

Every route names its policy with :func:`requires`; the :class:`Guard` middleware
finds the route a request matches and checks the bearer credential first, then reads
the body (at most ``MAX_BODY`` bytes) and only then hands the request on. A route that
names no policy is refused (default deny).

policies: ``node-token`` (the fleet-wide NODE_TOKEN: registration only), ``node`` (the
node credential of the path's ``{node_id}``, nothing else), ``operator``, ``client``,
``metrics`` (the metrics-only token, or the operator's), ``public`` (no credential; for
probes only).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

MAX_BODY = 64 * 1024
POLICY_KEY = "x-idra-auth"
SCHEMES = {"node-token": "nodeToken", "node": "nodeCredential",
           "operator": "operatorToken", "client": "clientToken",
           "metrics": "metricsToken"}  # fmt: skip
# The token kinds each policy accepts (default: the kind of the policy's own name).
ACCEPTS = {"node-token": ("node",), "metrics": ("metrics", "operator")}
# Routes FastAPI itself adds (the schema): only the operator reads them.
BUILTIN = {"/openapi.json": "operator"}

ERRORS = {
    400: "Bad body or query: {detail: 'field: message'}",
    401: "Missing or wrong credential for this call (checked before the body is read)",
    403: "Instance identity refused (signature, account, region, auto-scaling group)",
    404: "No such node or peer",
    409: "Instance already bound to a node credential, retired, key in use, "
    "(canary) node not active, (delete) node still runs, or (ops lease) another "
    "holder's lease runs",
    413: "Body larger than 64 KiB",
    429: "This node already holds 2 long-polls, or the control plane is full: retry "
    "after Retry-After seconds",
    503: "No capacity, or the AWS check is unavailable: retry later",
}


def requires(policy: str, *codes: int) -> dict[str, Any]:
    """Route keyword arguments: the auth policy, its OpenAPI security and error codes
    (``public``: no credential at all, for probes such as a health check)."""
    if policy == "public":
        return {"openapi_extra": {POLICY_KEY: policy, "security": []}}
    return {
        "openapi_extra": {POLICY_KEY: policy, "security": [{SCHEMES[policy]: []}]},
        "responses": {code: {"description": ERRORS[code]} for code in (401, 413, *codes)},
    }


def security_schemes() -> dict[str, Any]:
    return {name: {"type": "http", "scheme": "bearer"} for name in SCHEMES.values()}


def bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class Guard:
    """ASGI middleware: route policy, then the body cap, then the app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: list,
        tokens: dict[str, str],
        node_credential_ok: Callable[[str, str], bool],
    ) -> None:
        self.app, self.routes, self.node_credential_ok = app, routes, node_credential_ok
        self.tokens = {kind: token.encode() for kind, token in tokens.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, params = self._match(scope)
        if route is not None and not await self._allowed(scope, route, params):
            return await _reply(send, 401, "unauthorized", [(b"www-authenticate", b"Bearer")])
        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return await _reply(send, 413, f"body larger than {MAX_BODY} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY:
                return await _reply(send, 413, f"body larger than {MAX_BODY} bytes")
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _match(self, scope: Scope) -> tuple[Any, dict]:
        """The route this request will reach, or None (the app answers 404/405)."""
        for route in self.routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                return route, child.get("path_params", {})
        return None, {}

    async def _allowed(self, scope: Scope, route: Any, params: dict) -> bool:
        extra = getattr(route, "openapi_extra", None) or {}
        policy = extra.get(POLICY_KEY) or BUILTIN.get(getattr(route, "path", ""))
        if policy == "public":
            return True
        given = bearer(scope)
        if policy is None or not given:
            return False  # default deny
        if policy == "node":
            node_id = str(params.get("node_id", ""))
            return bool(node_id) and await run_in_threadpool(
                self.node_credential_ok, node_id, given
            )
        return any(
            hmac.compare_digest(given.encode(), self.tokens[kind])
            for kind in ACCEPTS.get(policy, (policy,))
            if kind in self.tokens
        )


async def _reply(send: Send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *(headers or [])],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
