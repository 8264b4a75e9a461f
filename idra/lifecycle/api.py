"""The operator's client of the node API v1, shared by ``idra nodes``, canary and reaper."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx


class ApiError(RuntimeError):
    """The control plane refused or failed a call; the message says which and why."""


class NotFound(ApiError):
    """The control plane has no such node."""


# TLS failures and what the operator most likely got wrong.
_TLS_HINTS = {
    "WRONG_VERSION_NUMBER": "the server does not speak TLS: is it plain http:// "
    "(allowed on loopback only)?",
    "CERTIFICATE_VERIFY_FAILED": "the server's certificate is not trusted: give "
    "--ca-file with the control plane's CA certificate (IDRA_CA_FILE)",
}


def _hint(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return "".join(f" (hint: {hint})" for key, hint in _TLS_HINTS.items() if key in text)


_OLDER = " (a control plane older than the ops endpoints?)"


def _body(response: httpx.Response) -> dict[str, Any]:
    """The reply's JSON object ({} when it is none)."""
    try:
        reply = response.json()
    except ValueError:
        reply = None
    return reply if isinstance(reply, dict) else {}


def _detail(response: httpx.Response) -> str | None:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return None
    return detail if isinstance(detail, str) else None


class OperatorApi:
    """Node list, drain and delete calls, with the operator token."""

    def __init__(self, url: str, token: str, ca_file: Path | None = None, timeout: float = 10):
        try:
            verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
        except (ssl.SSLError, OSError, ValueError):
            raise ValueError(f"--ca-file {ca_file}: not a PEM CA certificate") from None
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=timeout,
        )

    def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kw) -> httpx.Response:
        """The response; an error status raises :class:`ApiError`, except 404 and ``ok``."""
        where = f"{method} {self.url}{path}"
        try:
            response = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ApiError(f"{where}: {type(exc).__name__}: {exc}{_hint(exc)}") from None
        if response.status_code == 401:
            raise ApiError(f"{where}: HTTP 401: the operator token was refused")
        if response.status_code >= 400 and response.status_code not in (404, *ok):
            detail = " ".join(response.text[:200].split())
            raise ApiError(f"{where}: HTTP {response.status_code}: {detail}")
        return response

    def nodes(self, state: str | None = None) -> list[dict[str, Any]]:
        """The nodes the control plane knows (of ``state``, or all)."""
        params = {"state": state} if state else {}
        response = self._call("GET", "/v1/nodes", params=params)
        where = f"GET {self.url}/v1/nodes"
        try:
            nodes = response.json()["nodes"] if response.status_code == 200 else None
        except (ValueError, KeyError, TypeError):
            nodes = None
        if not isinstance(nodes, list) or not all(
            isinstance(n, dict) and isinstance(n.get("id"), str) for n in nodes
        ):
            raise ApiError(
                f"{where}: HTTP {response.status_code}, not a node list "
                "(--api-url is the control plane's base URL, without /v1)"
            )
        return nodes

    def node(self, node_id: str) -> dict[str, Any]:
        """One node (``GET /v1/nodes/{id}``)."""
        path = f"/v1/nodes/{node_id}"
        response = self._call("GET", path)
        if response.status_code == 404 and _detail(response) == "no such node":
            raise NotFound(f"{node_id}: no such node")
        try:
            node = response.json()
        except ValueError:
            node = None
        if not isinstance(node, dict) or node.get("id") != node_id:
            raise ApiError(
                f"GET {self.url}{path}: HTTP {response.status_code}, not a node "
                "(--api-url is the control plane's base URL, without /v1)"
            )
        return node

    def drain(self, node_id: str, reason: str) -> None:
        response = self._call("POST", "/node/drain", json={"id": node_id, "reason": reason})
        if response.status_code == 404:
            raise NotFound(f"{node_id}: no such node")

    def delete(self, node_id: str, *, missing_ok: bool = True, terminated: bool = False) -> None:
        """Forget a node; a node already gone is fine unless ``missing_ok`` is false. The
        control plane refuses (409) while the node still heartbeats, unless the caller has
        terminated its instance (``terminated``)."""
        params = {"terminated": "true"} if terminated else {}
        response = self._call("DELETE", f"/v1/nodes/{node_id}", params=params)
        if response.status_code == 404 and not missing_ok:
            raise NotFound(f"{node_id}: no such node")

    def canary_peer(self, node_id: str, public_key: str) -> dict[str, Any]:
        """Set (idempotently) the canary's peer on a node; its endpoint, key and address."""
        path = f"/v1/nodes/{node_id}/canary"
        try:
            response = self._call("POST", path, json={"public_key": public_key})
        except ApiError as exc:
            if "HTTP 409" in str(exc):
                raise NotFound(f"{node_id}: not active any more") from None
            raise
        if response.status_code == 404:
            raise NotFound(f"{node_id}: no such node")
        try:
            peer = response.json()
            peer = {
                "endpoint": str(peer["endpoint"]),
                "public_key": str(peer["public_key"]),
                "ipv4": str(peer["address"]["ipv4"]),
                "ipv6": str(peer["address"]["ipv6"]),
            }
        except (ValueError, KeyError, TypeError):
            raise ApiError(f"POST {self.url}{path}: not a canary peer reply") from None
        return peer

    def remove_canary(self, node_id: str) -> None:
        """Remove the canary's peer from a node; a node already gone is fine."""
        self._call("DELETE", f"/v1/nodes/{node_id}/canary")

    # -- the ops loop's state (``idra ops run``) ------------------------------------------

    def ops_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``seconds``; False while another holder's
        lease runs (``PUT /v1/ops/lease/{name}``)."""
        path = f"/v1/ops/lease/{name}"
        response = self._call("PUT", path, ok=(409,), json={"holder": holder, "seconds": seconds})
        reply = _body(response)
        if response.status_code in (200, 409) and isinstance(reply.get("holder"), str):
            return response.status_code == 200 and reply["holder"] == holder
        raise ApiError(f"PUT {self.url}{path}: HTTP {response.status_code}, not a lease reply"
                       f"{_OLDER if response.status_code == 404 else ''}")  # fmt: skip

    def ops_release(self, name: str, holder: str) -> None:
        """Give the lease up if ``holder`` holds it (another holder's stays)."""
        path = f"/v1/ops/lease/{name}"
        response = self._call("DELETE", path, ok=(409,), params={"holder": holder})
        if response.status_code == 404:
            raise ApiError(f"DELETE {self.url}{path}: HTTP 404{_OLDER}")

    def canary_confirmations(self) -> dict[str, int]:
        """The canary's confirmations kept in the control plane: node id → listed runs."""
        response = self._call("GET", "/v1/ops/canary")
        return self._listed_runs(response, "GET")

    def save_canary_confirmations(self, listed_runs: dict[str, int]) -> dict[str, int]:
        """Replace them; returns what is stored (nodes the control plane no longer knows
        are dropped)."""
        response = self._call("PUT", "/v1/ops/canary", json={"listed_runs": listed_runs})
        return self._listed_runs(response, "PUT")

    def _listed_runs(self, response: httpx.Response, method: str) -> dict[str, int]:
        listed = _body(response).get("listed_runs")
        if (
            response.status_code != 200
            or not isinstance(listed, dict)
            or not all(isinstance(k, str) and type(v) is int for k, v in listed.items())
        ):
            raise ApiError(f"{method} {self.url}/v1/ops/canary: HTTP {response.status_code}, "
                           f"not the canary's confirmations"
                           f"{_OLDER if response.status_code == 404 else ''}")  # fmt: skip
        return listed

    def close(self) -> None:
        self._http.close()
