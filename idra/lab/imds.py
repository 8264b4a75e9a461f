"""An IMDSv2 stand-in for one lab or test instance: a session token first (PUT, TTL
header required), then metadata reads with it; the instance identity document and its
signature (made by the lab's identity key) under ``/latest/dynamic/instance-identity``.
"""

from __future__ import annotations

import http.server
import secrets
import threading
from dataclasses import dataclass, field

IDENTITY = "/latest/dynamic/instance-identity/"
META = "/latest/meta-data/"


@dataclass
class Instance:
    """What one instance's metadata service answers (mutable: tests change it)."""

    document: str
    signature: str
    public_ipv4: str = ""
    lifecycle_state: str = "InService"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    extra: dict[str, str] = field(default_factory=dict)  # meta-data path → value

    def item(self, path: str) -> str | None:
        if path == IDENTITY + "document":
            return self.document
        if path == IDENTITY + "signature":
            return self.signature
        meta = {
            "public-ipv4": self.public_ipv4 or None,
            "autoscaling/target-lifecycle-state": self.lifecycle_state,
            **self.extra,
        }
        return meta.get(path.removeprefix(META)) if path.startswith(META) else None

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        instance = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                if self.path != "/latest/api/token" or not ttl:
                    return self._send(400, "")
                self._send(200, instance.token)

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != instance.token:
                    return self._send(401, "")
                value = instance.item(self.path)
                self._send(404, "") if value is None else self._send(200, value)

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        return Handler


def serve(instance: Instance, host: str = "127.0.0.1", port: int = 0):
    """Serve in a thread; returns the server (``server.server_address``, ``shutdown()``)."""
    server = http.server.ThreadingHTTPServer((host, port), instance.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
