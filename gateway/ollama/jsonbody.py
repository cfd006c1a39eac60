"""Reading request-body fields exactly the way Ollama's Go JSON decoder will.

Go matches object keys to struct fields case-insensitively (with Unicode simple folding, so the
Kelvin sign folds to ``k`` and the long s to ``s``), lets the last matching key win, and ignores a
``null`` for a plain string field. A gateway that read ``{"model": "ok", "MODEL": "secret"}`` with
Python's dict semantics would check one model while Ollama runs another.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from gateway.errors import BadRequest

_GO_FOLD = str.maketrans({"\u212a": "k", "\u017f": "s"})


def _fold(key: str) -> str:
    folded = key.translate(_GO_FOLD)
    # Outside ASCII (after the two special cases) nothing folds onto an ASCII field name.
    return folded.lower() if folded.isascii() else folded


class _LastPairs(threading.local):
    """A decoder that notes the members of the last object it finished: inner objects finish
    first, so after a parse that is the top-level object's. One per thread, made once (json.loads
    with a hook builds a decoder on every call, a fifth of a small body's parse)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, Any]] | None = None
        self.decoder = json.JSONDecoder(object_pairs_hook=self._keep)

    def decode(self, raw: bytes) -> tuple[Any, list[tuple[str, Any]] | None]:
        """The value, and the members of the top-level object (None when it is no object)."""
        self.pairs = None
        try:
            # As json.loads reads bytes (its encoding detected, surrogates passed).
            value = self.decoder.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
            return value, self.pairs
        finally:
            self.pairs = None

    def _keep(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        self.pairs = pairs
        return dict(pairs)


_PAIRS = _LastPairs()


class JsonBody:
    """The top-level members of a JSON object body, in document order."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs
        # Folded name -> every non-null value Go would assign, in order (folding once, here).
        self._values: dict[str, list[Any]] = {}
        for key, value in pairs:
            if value is not None:
                self._values.setdefault(_fold(key), []).append(value)

    @classmethod
    def parse(cls, raw: bytes) -> JsonBody:
        if raw.isspace() or not raw:  # not strip(): that copies a large body
            raise BadRequest("missing request body")
        try:
            value, pairs = _PAIRS.decode(raw)
        except (ValueError, RecursionError):
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(value, dict) or pairs is None:
            raise BadRequest("request body must be a JSON object")
        return cls(pairs)

    def values(self, field: str) -> list[Any]:
        """Every non-null value Go would assign to ``field``, in order (the last one wins)."""
        return self._values.get(field, [])

    def get(self, field: str) -> Any:
        values = self._values.get(field)
        return values[-1] if values else None

    def string(self, field: str) -> str | None:
        """The string Go would decode; any non-string value makes Ollama refuse the body, so 400."""
        result = None
        for result in self.values(field):
            if not isinstance(result, str):
                raise BadRequest(f"'{field}' must be a string")
        return result
