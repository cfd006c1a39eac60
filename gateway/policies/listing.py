"""Filtering model listings (/api/tags, /api/ps, /v1/models) down to what a key may use."""

from __future__ import annotations

import json
from collections.abc import Callable

from gateway.ollama.models import InvalidModelName, ModelName, parse_model


class ListingFilter:
    """A body transform: collects the (small) listing and re-emits it with entries removed.

    Anything that is not a listing (an error body, say) is passed on unchanged.
    """

    def __init__(self, allowed: Callable[[ModelName], bool]) -> None:
        self._allowed = allowed
        self._buffer = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        return b""

    def end(self) -> bytes:
        raw = bytes(self._buffer)
        try:
            listing = json.loads(raw)
        except ValueError:
            return raw
        if not isinstance(listing, dict):
            return raw
        for field, name_key in (("models", "model"), ("data", "id")):
            entries = listing.get(field)
            if isinstance(entries, list):
                listing[field] = [entry for entry in entries if self._keeps(entry, name_key)]
                break
        else:
            return raw
        filtered = json.dumps(listing, separators=(",", ":"), ensure_ascii=False).encode()
        return filtered + b"\n" if raw.endswith(b"\n") else filtered

    def _keeps(self, entry: object, name_key: str) -> bool:
        if not isinstance(entry, dict):
            return False
        name = entry.get(name_key) or entry.get("name")
        if not isinstance(name, str):
            return False
        try:
            return self._allowed(parse_model(name))
        except InvalidModelName:
            return False
