"""EC2 instance identity (ARCHITECTURE §3a): verify an instance identity document and its
base64 RSA-SHA256 signature, as in the AWS guide "verify the instance identity
document", against configured certificates; then check the account and the region.

Only the verified document says which instance is calling: ``instance_id`` and
``region`` are taken from it, never from the rest of the request.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MAX_DOCUMENT = 4096  # real documents are about 500 bytes
INSTANCE_ID = re.compile(r"^i-[0-9a-z]{1,32}$")  # EC2: i- and 8 or 17 hex digits
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
ACCOUNT = re.compile(r"^\d{12}$")


class IdentityRefused(ValueError):
    """The document is not signed by a trusted certificate, or names the wrong place."""


@dataclass(frozen=True)
class Identity:
    instance_id: str
    region: str
    account_id: str


@dataclass(frozen=True)
class TrustedCert:
    key: rsa.RSAPublicKey
    region: str | None  # None: any region (a bundle)


def load_certs(spec: str) -> list[TrustedCert]:
    """``[REGION=]FILE``: every PEM certificate in FILE (RSA keys only)."""
    region, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    if region and not REGION.match(region):
        raise ValueError(f"{spec}: {region!r} is not a region")
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    except ValueError:
        raise ValueError(f"{path}: not a PEM certificate") from None
    keys = []
    for cert in certs:
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"{path}: not an RSA certificate")
        keys.append(TrustedCert(key, region or None))
    return keys


@dataclass
class Verifier:
    certs: list[TrustedCert]
    accounts: frozenset[str]
    regions: frozenset[str] = field(default_factory=frozenset)  # empty: any region

    def verify(self, document: str, signature: str) -> Identity:
        """The verified identity, or :class:`IdentityRefused` saying why not. The
        signature is checked before the document is parsed: unsigned bytes never reach
        the JSON parser, and a signed but deeply nested document is refused, not a 500."""
        raw = document.encode()
        if len(raw) > MAX_DOCUMENT:
            raise IdentityRefused("document too large")
        try:
            sig = base64.b64decode("".join(signature.split()), validate=True)
        except (binascii.Error, ValueError):
            raise IdentityRefused("document or signature malformed") from None
        signers = [c for c in self.certs if _valid(c.key, sig, raw)]
        if not signers:
            raise IdentityRefused("signature does not verify with a trusted certificate")
        try:
            claims = json.loads(raw)
        except (ValueError, RecursionError):
            raise IdentityRefused("document malformed") from None
        if not isinstance(claims, dict):
            raise IdentityRefused("document malformed")
        if not any(c.region in (None, claims.get("region")) for c in signers):
            raise IdentityRefused("signature does not verify with a trusted certificate")
        instance_id, region, account = (
            str(claims.get(k, "")) for k in ("instanceId", "region", "accountId")
        )
        if not INSTANCE_ID.match(instance_id) or not REGION.match(region):
            raise IdentityRefused("document lacks a valid instanceId or region")
        if not ACCOUNT.match(account) or account not in self.accounts:
            raise IdentityRefused("account not allowed")
        if self.regions and region not in self.regions:
            raise IdentityRefused("region not allowed")
        return Identity(instance_id, region, account)


def _valid(key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True
