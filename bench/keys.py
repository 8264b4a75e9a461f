"""Random 32-byte WireGuard public keys (base64): identifiers for load, not real keys.
Kept import-free so memory measurements that use it stay clean."""

import base64
import os


def random_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()
