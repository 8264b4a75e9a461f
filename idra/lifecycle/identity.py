"""The canary's own WireGuard key: generated once, kept mode 0600 in its state folder.

The private key never leaves this file (it is handed to ``wg`` on stdin) and is never
logged; the public key is what the control plane puts on every node as the canary peer.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

_RAW = {"encoding": serialization.Encoding.Raw}


def _public(private: X25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(format=serialization.PublicFormat.Raw, **_RAW)
    return base64.b64encode(raw).decode()


def load_or_create(path: Path) -> tuple[str, str]:
    """The (private, public) key pair in ``path``, created (0600, atomically) if absent.

    ValueError with one line naming the file when it cannot be made or is unsafe: group or
    world may read it, it is not ours, or it does not hold one base64 32-byte key."""
    flag = f"--key-file {path}"
    if not path.exists():
        _create(path, flag)
    try:
        info = path.stat()
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{flag}: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
        raise ValueError(f"{flag}: must be a file only its owner can read (chmod 600)")
    if info.st_uid != os.geteuid():
        raise ValueError(f"{flag}: owned by another user")
    try:
        raw = base64.b64decode(text, validate=True)
        private = X25519PrivateKey.from_private_bytes(raw)
    except (binascii.Error, ValueError):
        raise ValueError(f"{flag}: not a WireGuard private key (base64, 32 bytes)") from None
    return text, _public(private)


def _create(path: Path, flag: str) -> None:
    """Write a new key to a 0600 temporary file, then link it in place (never half a file,
    and a key another canary made meanwhile wins)."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(
        format=serialization.PrivateFormat.Raw,
        encryption_algorithm=serialization.NoEncryption(),
        **_RAW,
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(raw).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError as exc:
        raise ValueError(f"{flag}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
