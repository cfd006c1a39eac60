"""Which headers cross the gateway, in each direction.

Requests: hop-by-hop headers belong to the client's connection, not ours; credentials are for the
gateway only (Ollama proxies ``:cloud`` requests off-box with every inbound header, so anything
left here could leak); ``Origin`` is handled by the gateway (Ollama answers foreign origins with an
empty 403); ``Host`` must be the upstream's own (Ollama on loopback refuses foreign hosts).
Responses: hop-by-hop headers and the upstream's ``Date``/``Server`` are dropped; everything else,
``Content-Type`` above all, is copied exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
CREDENTIALS = frozenset({b"authorization", b"x-api-key", b"api-key", b"cookie"})
_REQUEST_DROP = (
    HOP_BY_HOP
    | CREDENTIALS
    | {
        b"host",
        b"origin",
        b"expect",
        b"accept-encoding",
        # Replaced by the gateway's own view of the client (see clientaddr).
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-real-ip",
        b"x-request-id",
        # The gateway's own routing instruction (which server of several), not Ollama's business.
        b"x-gateway-upstream",
    }
)
_RESPONSE_DROP = HOP_BY_HOP | {b"date", b"server"}

# Names the server (of several) an admin request is for; see gateway/policies/routing.py.
UPSTREAM_HEADER = b"x-gateway-upstream"

STREAM_HEADERS: Headers = [(b"x-accel-buffering", b"no"), (b"cache-control", b"no-cache")]
STREAM_TYPES = (b"application/x-ndjson", b"text/event-stream")


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    return frozenset(tokens)


def upstream_request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    forwarded_for: bytes,
    forwarded_proto: bytes,
    request_id: bytes,
) -> Headers:
    """The client's headers as Ollama should see them (names lower-cased)."""
    headers = list(headers)
    drop = _REQUEST_DROP | _connection_tokens(headers)
    out: Headers = [(name.lower(), value) for name, value in headers if name.lower() not in drop]
    out.append((b"x-forwarded-for", forwarded_for))
    out.append((b"x-forwarded-proto", forwarded_proto))
    out.append((b"x-request-id", request_id))
    # Responses are relayed untouched and read for accounting, so ask for them uncompressed
    # (Ollama never compresses anyway).
    out.append((b"accept-encoding", b"identity"))
    return out


def client_response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The upstream's response headers as the client should see them."""
    headers = list(headers)
    drop = _RESPONSE_DROP | _connection_tokens(headers)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of ``name`` (lower-case) in an ASGI header list."""
    for key, value in headers:
        if key == name:
            return value
    return None


def is_stream(content_type: bytes | None) -> bool:
    return content_type is not None and content_type.lower().startswith(STREAM_TYPES)
