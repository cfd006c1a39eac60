"""Byte-level encoding the way Ollama's Go server writes it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

JSON_UTF8 = "application/json; charset=utf-8"
JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TEXT = "text/plain"
TEXT_UTF8 = "text/plain; charset=utf-8"
HTML_UTF8 = "text/html; charset=utf-8"

# Go's encoder escapes these even inside strings; clients only agree on decoded text.
_GO_ESCAPES = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def go_json(value: object) -> bytes:
    """Compact JSON as Go's `json.Marshal` writes it (no trailing newline)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.translate(_GO_ESCAPES)
    # Go turns invalid UTF-8 into U+FFFD, so every line it writes is valid UTF-8.
    return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def ndjson_line(value: object) -> bytes:
    return go_json(value) + b"\n"


def sse_event(value: object) -> bytes:
    return b"data: " + go_json(value) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def go_quote(text: str) -> str:
    """Go's %q for the plain strings that appear in Ollama's error messages."""
    return json.dumps(text, ensure_ascii=False)


def rfc3339_nano(ns: int | None = None) -> str:
    """UTC time with nanoseconds and trailing zeros dropped, as Go's time.Time marshals."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def omit_zero(values: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Drop `omitempty` fields whose value is the zero value."""
    dropped = set(keys)
    return {k: v for k, v in values.items() if k not in dropped or v}
