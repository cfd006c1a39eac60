"""Request-target safety: the only path that reaches the upstream is a plain, normalised one.

The upstream host is fixed by configuration; these checks make sure no spelling of a path can
climb out of it (dot segments, encoded slashes or dots, backslashes, NUL, empty segments that a
URL parser could read as an authority) and that what the route table classifies is exactly what
Ollama will route, since Go's router matches the percent-decoded path.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from gateway.errors import InvalidPath

# RFC 3986 pchar plus "/"; anything else (spaces, quotes, non-ASCII, backslash) is refused.
_RAW_PATH = re.compile(rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")
_QUERY = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*")
_ENCODED_SEPARATOR = re.compile(rb"%(2[fF]|5[cC]|00)")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f\\%]")


def checked_path(raw_path: bytes) -> str:
    """The decoded path for ``raw_path`` if it is safe to forward, else ``InvalidPath``."""
    if not _RAW_PATH.fullmatch(raw_path) or _ENCODED_SEPARATOR.search(raw_path):
        raise InvalidPath("invalid request path")
    decoded = unquote_to_bytes(raw_path)
    # A "%" left after one decoding is double encoding; Ollama never needs it.
    if _CONTROL.search(decoded):
        raise InvalidPath("invalid request path")
    segments = decoded.split(b"/")[1:]
    inner, last = segments[:-1], segments[-1]
    if any(segment in (b"", b".", b"..") for segment in inner) or last in (b".", b".."):
        raise InvalidPath("invalid request path")
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPath("invalid request path") from None


def checked_query(query: bytes) -> bytes:
    if not _QUERY.fullmatch(query):
        raise InvalidPath("invalid query string")
    return query
