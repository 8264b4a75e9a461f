"""The boot step that installs the agent verifies its sha256 and fails closed.

The script is taken from the rendered user-data and run for real: curl over HTTPS from a
local server (self-signed certificate), sha256sum, install.
"""

from __future__ import annotations

import datetime
import hashlib
import http.server
import ipaddress
import os
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from idra.config import load_stack
from idra.render import render_node_files

PAYLOAD = b"PK\x05\x06" + bytes(18)  # an empty zip: stands in for node-daemon.pyz


def _certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("https")
    (folder / "node-daemon.pyz").write_bytes(PAYLOAD)
    cert, key = _certificate(folder)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kw):
            super().__init__(*args, directory=str(folder), **kw)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", cert
    httpd.shutdown()


def _install(server, tmp_path: Path, sha256: str, path: str = "node-daemon.pyz"):
    url, cert = server
    cfg = load_stack("staging").model_copy(
        update={"agent_url": f"{url}/{path}", "agent_sha256": sha256}
    )
    user_data = yaml.safe_load(render_node_files(cfg)["user-data.yaml"])
    script = next(
        f["content"] for f in user_data["write_files"]
        if f["path"] == "/usr/local/sbin/idra-install-agent"
    )  # fmt: skip
    (tmp_path / "install").write_text(script)
    dest = tmp_path / "lib" / "node-daemon.pyz"
    env = {**os.environ, "CURL_CA_BUNDLE": str(cert)}
    result = subprocess.run(
        ["sh", str(tmp_path / "install"), str(dest)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result, dest


def test_matching_checksum_installs(server, tmp_path: Path) -> None:
    result, dest = _install(server, tmp_path, hashlib.sha256(PAYLOAD).hexdigest())
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == PAYLOAD
    assert dest.stat().st_mode & 0o777 == 0o555


def test_mismatched_checksum_refuses(server, tmp_path: Path) -> None:
    result, dest = _install(server, tmp_path, hashlib.sha256(b"other").hexdigest())
    assert result.returncode != 0
    assert "sha256 mismatch" in result.stderr
    assert not dest.exists()


def test_download_failure_refuses(server, tmp_path: Path) -> None:
    result, dest = _install(server, tmp_path, hashlib.sha256(PAYLOAD).hexdigest(), "missing")
    assert result.returncode != 0
    assert not dest.exists()


def test_later_boots_verify_the_kept_file_without_downloading(server, tmp_path: Path) -> None:
    """First boot downloads; every later boot re-verifies the file on disk against the pin
    and never asks the network (here the URL names a file the server does not have)."""
    pin = hashlib.sha256(PAYLOAD).hexdigest()
    first, dest = _install(server, tmp_path, pin)
    assert first.returncode == 0, first.stderr
    later, again = _install(server, tmp_path, pin, "gone-during-an-outage")
    assert later.returncode == 0, later.stderr
    assert again == dest and dest.read_bytes() == PAYLOAD


def test_a_changed_file_on_disk_is_refused_not_replaced(server, tmp_path: Path) -> None:
    pin = hashlib.sha256(PAYLOAD).hexdigest()
    first, dest = _install(server, tmp_path, pin)
    assert first.returncode == 0, first.stderr
    dest.chmod(0o644)
    dest.write_bytes(PAYLOAD + b"tampered")
    later, _ = _install(server, tmp_path, pin)
    assert later.returncode != 0
    assert "does not match the pinned sha256" in later.stderr
    assert dest.read_bytes() == PAYLOAD + b"tampered", "not silently downloaded again"
