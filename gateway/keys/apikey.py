"""API keys: generation, parsing and verification (pure; no storage, no I/O).

A key reads ``ogw_<id>_<secret>``: a fixed prefix that secret scanners and people can spot, a short
public id that logs and listings can name, and 256 random bits. Only a SHA-256 digest of the whole
key is stored; with that much entropy a slow password hash would protect nothing and only block
the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "ogw_"
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
_ID_LENGTH = 8
_SECRET_BYTES = 32
_KEY = re.compile(r"ogw_([a-km-np-z2-9]{8})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    secret: str  # the whole key, shown once
    digest: str


def new_key_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def generate(key_id: str | None = None) -> NewKey:
    key_id = key_id or new_key_id()
    secret = f"{PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    return NewKey(key_id, secret, digest(secret))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The public id inside a well-formed key, else None."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match else None


def verify(key: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(key), stored_digest)
