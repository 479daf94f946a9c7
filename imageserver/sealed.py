"""Variants are derived data, so each stored one is sealed: a digest of its name and bytes
goes in front of them. The name holds the image id and the renderer that made it
(`variants.renderer()`), so a sealed variant cannot pass for another image's, another size's,
or another renderer's. Storage nodes check the seal when a variant is written and before
they serve it (a damaged one is moved aside: a miss, which the frontend re-renders), and the
frontend checks it again end to end. Originals need no seal: their name is their SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac

MAGIC = b"ISV1"
DIGEST = 32
HEADER = len(MAGIC) + DIGEST


def _digest(name: str, payload: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\0" + payload).digest()


def seal(name: str, payload: bytes) -> bytes:
    return MAGIC + _digest(name, payload) + payload


def unseal(name: str, data: bytes) -> bytes | None:
    """The payload, or None when `data` is not a sound seal of `name`."""
    if len(data) < HEADER or not data.startswith(MAGIC):
        return None
    payload = data[HEADER:]
    if not hmac.compare_digest(data[len(MAGIC) : HEADER], _digest(name, payload)):
        return None
    return payload
