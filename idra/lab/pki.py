"""Throw-away keys for the lab (cryptography): a certificate authority for its TLS, and
the signer of its EC2 instance identity documents."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: Path) -> None:
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _sign(subject: str, issuer: str, key, signer, extensions, days: int) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def make_ca_and_server(
    folder: Path, addresses: list[str], days: int = 7
) -> tuple[Path, Path, Path]:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (for ``addresses``) in ``folder``."""
    ca_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    ca = _sign(
        "IDRA lab CA", "IDRA lab CA", ca_key, ca_key,
        [(x509.BasicConstraints(ca=True, path_length=0), True)], days,
    )  # fmt: skip
    names = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    )
    server = _sign(
        addresses[0], "IDRA lab CA", server_key, ca_key,
        [(names, False), (x509.BasicConstraints(ca=False, path_length=None), True)], days,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, key_path)
    return ca_path, cert_path, key_path


LAB_ACCOUNT = "000000000000"  # the lab's pretend AWS account


class IdentitySigner:
    """Plays AWS's side of instance identity: an RSA key whose self-signed certificate
    the control plane is told to trust, and documents signed the way EC2 signs them
    (base64 RSA-SHA256 of the document's exact bytes, the ``/signature`` item)."""

    def __init__(self, key: rsa.RSAPrivateKey | None = None, days: int = 7) -> None:
        self.key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert = _sign(
            "IDRA lab instance identity", "IDRA lab instance identity", self.key, self.key,
            [(x509.BasicConstraints(ca=False, path_length=None), True)], days,
        )  # fmt: skip

    def write_cert(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def write_key(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_key(self.key, path)
        return path

    @classmethod
    def load(cls, key_file: Path) -> IdentitySigner:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{key_file}: not an RSA key")
        return cls(key)

    def sign(self, document: str) -> str:
        signature = self.key.sign(document.encode(), padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode()

    @staticmethod
    def document(
        instance_id: str | None = None,
        region: str = "eu-central-1",
        account: str = LAB_ACCOUNT,
        private_ip: str = "10.20.0.10",
    ) -> str:
        """An instance identity document as IMDS serves it (pretty-printed JSON)."""
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return json.dumps(
            {
                "accountId": account,
                "architecture": "x86_64",
                "availabilityZone": f"{region}a",
                "imageId": "ami-0123456789abcdef0",
                "instanceId": instance_id or new_instance_id(),
                "instanceType": "c7gn.large",
                "pendingTime": now,
                "privateIp": private_ip,
                "region": region,
                "version": "2017-09-30",
            },
            indent=2,
        )


def new_instance_id() -> str:
    """A fresh id in EC2's format (``i-`` and 17 hex digits)."""
    return "i-0" + secrets.token_hex(8)
