"""Operator calls of the node API v1 (canary and reaper side)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx


class ApiError(RuntimeError):
    """The control plane refused or failed a call; the message says which and why."""


class OperatorApi:
    """Node list, drain and delete calls, with the operator token."""

    def __init__(self, url: str, token: str, ca_file: Path | None = None, timeout: float = 10):
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=ca_file) if ca_file else True,
            timeout=timeout,
        )

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ApiError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400 and response.status_code != 404:
            raise ApiError(f"{method} {path}: HTTP {response.status_code}: {response.text[:200]}")
        return response

    def nodes(self, state: str) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/nodes", params={"state": state}).json()["nodes"]

    def drain(self, node_id: str, reason: str) -> None:
        response = self._call("POST", "/node/drain", json={"id": node_id, "reason": reason})
        if response.status_code == 404:
            raise ApiError(f"drain {node_id}: no such node")

    def delete(self, node_id: str) -> None:
        """Forget a node; a node already gone is fine (idempotent)."""
        self._call("DELETE", f"/v1/nodes/{node_id}")

    def close(self) -> None:
        self._http.close()
