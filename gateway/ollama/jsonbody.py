"""Reading request-body fields exactly the way Ollama's Go JSON decoder will.

Go matches object keys to struct fields case-insensitively (with Unicode simple folding, so the
Kelvin sign folds to ``k`` and the long s to ``s``), lets the last matching key win, and ignores a
``null`` for a plain string field. A gateway that read ``{"model": "ok", "MODEL": "secret"}`` with
Python's dict semantics would check one model while Ollama runs another.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import BadRequest

_GO_FOLD = str.maketrans({"\u212a": "k", "\u017f": "s"})


def _fold(key: str) -> str:
    folded = key.translate(_GO_FOLD)
    # Outside ASCII (after the two special cases) nothing folds onto an ASCII field name.
    return folded.lower() if folded.isascii() else folded


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
        top: list[list[tuple[str, Any]]] = []

        def keep_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            # Inner objects finish first, so the last call is the top-level object.
            top.append(pairs)
            return dict(pairs)

        if raw.isspace() or not raw:  # not strip(): that copies a large body
            raise BadRequest("missing request body")
        try:
            value = json.loads(raw, object_pairs_hook=keep_pairs)
        except (ValueError, RecursionError):
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(value, dict):
            raise BadRequest("request body must be a JSON object")
        return cls(top[-1])

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
