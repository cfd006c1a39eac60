"""The ``ollama`` command's signed requests, read and checked.

With ``OLLAMA_AUTH=1`` Ollama's Go client signs every request: ``Authorization: <public key>:<sig>``
where ``<public key>`` is the base64 SSH blob of its Ed25519 key and ``<sig>`` the standard base64
of the raw 64-byte Ed25519 signature over the bytes ``METHOD,PATH?ts=NOW`` (``PATH`` without any
query or base path, ``NOW`` Unix seconds, also sent as the ``ts`` query parameter). The body is
not signed: whoever sees a request can replay it for the same method and path while its ``ts`` is
accepted. Ed25519 signatures are deterministic, so identical requests within a second look alike.

It knows the scheme and the cryptography; not who owns a key, nor the request around it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.keys.ollamakey import InvalidOllamaKey, OllamaKey, strict_b64decode

_SIGNATURE_BYTES = 64
# Two base64 runs joined by one colon, nothing else: how a signed header differs from
# ``Bearer …``, ``Basic …`` or a bare key (gateway keys contain no colon).
_SHAPE = re.compile(r"[A-Za-z0-9+/]+={0,2}:[A-Za-z0-9+/]+={0,2}")
_TS = re.compile(r"[0-9]{1,12}")


class MalformedSignature(ValueError):
    """Looks like a signed request, but its header or its ``ts`` is not well formed."""


@dataclass(frozen=True, slots=True)
class SignedHeader:
    key: OllamaKey
    signature: bytes


def signed_header(authorization: bytes) -> SignedHeader | None:
    """The signed-request credential in an ``Authorization`` value; None when the value is not of
    that shape (another scheme); ``MalformedSignature`` when it is, but is not exact."""
    text = authorization.decode("latin-1").strip()
    if not _SHAPE.fullmatch(text):
        return None
    encoded_key, _, encoded_signature = text.partition(":")
    try:
        key = OllamaKey.from_encoded(encoded_key)
        signature = strict_b64decode(encoded_signature)
    except InvalidOllamaKey as error:
        raise MalformedSignature(str(error)) from None
    if len(signature) != _SIGNATURE_BYTES:
        raise MalformedSignature("an Ed25519 signature has 64 bytes")
    return SignedHeader(key, signature)


def timestamp(values: list[str]) -> int:
    """The one ``ts`` query value, as whole Unix seconds."""
    if len(values) != 1 or not _TS.fullmatch(values[0]):
        raise MalformedSignature("a signed request carries exactly one ts=<unix seconds>")
    return int(values[0])


def signed_bytes(method: str, path: str, ts: int) -> bytes:
    return f"{method},{path}?ts={ts}".encode()


class Verifier:
    """Checks signatures, keeping the parsed public keys of the callers seen last (parsing a key is
    most of the cost of a check)."""

    def __init__(self, *, cached_keys: int = 4096) -> None:
        self._keys: OrderedDict[bytes, Ed25519PublicKey] = OrderedDict()
        self._limit = cached_keys

    def verify(self, header: SignedHeader, message: bytes) -> bool:
        public = self._keys.get(header.key.blob)
        if public is None:
            public = Ed25519PublicKey.from_public_bytes(header.key.raw)
            self._keys[header.key.blob] = public
            if len(self._keys) > self._limit:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(header.key.blob)
        try:
            public.verify(header.signature, message)
        except InvalidSignature:
            return False
        return True
