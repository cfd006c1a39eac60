"""Ollama public keys: the ``ssh-ed25519 AAAA… comment`` line of ``~/.ollama/id_ed25519.pub``, the
SSH wire blob inside it, its fingerprint as ``ssh-keygen -lf`` prints it, and the form Ollama puts
in a connect URL.

Only Ed25519 keys exist here: the ``ollama`` command makes and signs with nothing else. Parsing is
strict (canonical base64, the exact wire layout, a 32-byte key), because a lenient parser would
give one key several spellings. It knows no store, no request and no signature check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

ALGORITHM = "ssh-ed25519"
_KEY_BYTES = 32
# An authorized_keys comment is free text; one long enough for any host name is plenty.
_COMMENT_LIMIT = 200


class InvalidOllamaKey(ValueError):
    """Not an Ed25519 public key in OpenSSH's format."""


def strict_b64decode(text: str) -> bytes:
    """Standard base64 with its padding, and nothing a second spelling could add."""
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidOllamaKey("not base64") from None
    if base64.b64encode(decoded).decode("ascii") != text:
        raise InvalidOllamaKey("not canonical base64")
    return decoded


def _raw_key(blob: bytes) -> bytes:
    """The 32 key bytes of an SSH wire blob: ``string "ssh-ed25519", string key``, nothing more."""
    fields: list[bytes] = []
    offset = 0
    while offset < len(blob) and len(fields) < 2:
        if offset + 4 > len(blob):
            break
        (length,) = struct.unpack_from(">I", blob, offset)
        offset += 4
        if offset + length > len(blob):
            break
        fields.append(blob[offset : offset + length])
        offset += length
    if len(fields) != 2 or offset != len(blob):
        raise InvalidOllamaKey("not an SSH public key blob")
    if fields[0] != ALGORITHM.encode():
        raise InvalidOllamaKey(f"not an {ALGORITHM} key (only Ed25519 keys sign Ollama's requests)")
    if len(fields[1]) != _KEY_BYTES:
        raise InvalidOllamaKey("an Ed25519 key has 32 bytes")
    return fields[1]


def fingerprint(blob: bytes) -> str:
    """``SHA256:…`` of an SSH wire blob, exactly as ``ssh-keygen -lf`` prints it (unpadded base64)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


@dataclass(frozen=True, slots=True)
class OllamaKey:
    blob: bytes  # the SSH wire encoding
    comment: str = ""

    def __post_init__(self) -> None:
        _raw_key(self.blob)
        if len(self.comment) > _COMMENT_LIMIT or not self.comment.isprintable():
            raise InvalidOllamaKey(f"the comment must be printable and at most {_COMMENT_LIMIT} characters")

    @classmethod
    def from_line(cls, text: str) -> OllamaKey:
        """``ssh-ed25519 AAAA… [comment]``, as in ``id_ed25519.pub``."""
        parts = text.strip().split(None, 2)
        if len(parts) < 2:
            raise InvalidOllamaKey(f"expected '{ALGORITHM} AAAA… [comment]'")
        if parts[0] != ALGORITHM:
            raise InvalidOllamaKey(f"not an {ALGORITHM} key (only Ed25519 keys sign Ollama's requests)")
        blob = strict_b64decode(parts[1])
        return cls(blob, parts[2].strip() if len(parts) == 3 else "")

    @classmethod
    def from_encoded(cls, text: str) -> OllamaKey:
        """The base64 blob alone, as a signed request's ``Authorization`` header carries it."""
        return cls(strict_b64decode(text))

    @property
    def raw(self) -> bytes:
        return _raw_key(self.blob)

    @property
    def encoded(self) -> str:
        return base64.b64encode(self.blob).decode("ascii")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    @property
    def line(self) -> str:
        return f"{ALGORITHM} {self.encoded}" + (f" {self.comment}" if self.comment else "")

    @property
    def connect_token(self) -> str:
        """The whole line in unpadded base64url, as Ollama encodes it for its own connect page."""
        return base64.urlsafe_b64encode(self.line.encode()).decode("ascii").rstrip("=")

    @classmethod
    def from_connect_token(cls, token: str) -> OllamaKey:
        try:
            line = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
        except (binascii.Error, ValueError):
            raise InvalidOllamaKey("not a connect token") from None
        return cls.from_line(line)
