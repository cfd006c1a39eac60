"""CORS for browser clients, answered by the gateway (Ollama would refuse foreign origins itself).

Allowed origins are a setting (default: none, so browsers cannot call the gateway cross-origin).
A preflight is answered without a key, since browsers never send credentials on it.
"""

from __future__ import annotations

import fnmatch

from gateway.proxy.headers import Headers

_ALLOWED_HEADERS = (
    b"authorization, content-type, x-api-key, x-request-id, user-agent, accept, openai-beta, "
    b"openai-organization, openai-project, x-stainless-arch, x-stainless-async, x-stainless-lang, "
    b"x-stainless-os, x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, "
    b"x-stainless-runtime-version, x-stainless-read-timeout, x-stainless-timeout"
)
_EXPOSED_HEADERS = (
    b"x-request-id, retry-after, x-gateway-overhead-ms, x-queue-wait-ms, x-ratelimit-limit-requests, "
    b"x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, "
    b"x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"
)
_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class Cors:
    def __init__(self, origins: tuple[str, ...]) -> None:
        self._origins = tuple(origin.rstrip("/").lower() for origin in origins)

    def allows(self, origin: bytes) -> bool:
        text = origin.decode("latin-1").rstrip("/").lower()
        return any(pattern == "*" or fnmatch.fnmatchcase(text, pattern) for pattern in self._origins)

    def response_headers(self, origin: bytes) -> Headers:
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-expose-headers", _EXPOSED_HEADERS),
            (b"vary", b"Origin"),
        ]

    def preflight_headers(self, origin: bytes) -> Headers:
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", _METHODS),
            (b"access-control-allow-headers", _ALLOWED_HEADERS),
            (b"access-control-max-age", b"600"),
            (b"vary", b"Origin"),
        ]
