"""What every admin response carries, and what every admin request may be.

Browsers get a strict policy: scripts, styles and images only from this origin (no inline script,
so injected markup cannot run), no framing (clickjacking), no referrer (the page's URL leaves
nothing behind), no MIME sniffing. API answers are never cached: they hold key lists and, once,
secrets. Request bodies are small JSON documents: anything larger is refused before it is parsed.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import BodyTooLarge
from gateway.proxy.headers import header
from gateway.routes.responses import ErrorResponse

MAX_BODY = 64 * 1024

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), clipboard-write=(self)"),
]
_NO_STORE = (b"cache-control", b"no-store")
_LEFT = b"\0client left"  # a marker, compared by identity
# The page's own files may be kept, but must be checked again (a new version is served at once).
_REVALIDATE = (b"cache-control", b"no-cache")


class Hardening:
    """Pure ASGI: security headers on every response, a bounded request body."""

    def __init__(self, app: ASGIApp, *, api_prefix: str = "/api/", max_body: int = MAX_BODY) -> None:
        self.app = app
        self._api_prefix = api_prefix
        self._max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route_path = scope["path"][len(scope.get("root_path", "")) :]
        cache = _NO_STORE if route_path.startswith(self._api_prefix) else _REVALIDATE

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(name, value) for name, value in message.get("headers", []) if name != b"cache-control"]
                message["headers"] = [*kept, *_HEADERS, cache]
            await send(message)

        body = await self._bounded_body(scope, receive)
        if body is _LEFT:
            return  # the client left mid-body: a truncated body is not a request
        if body is None:
            refusal = BodyTooLarge(f"request body is larger than {self._max_body} bytes")
            # The rest of an oversized body is not read: close rather than leave it in the pipe.
            await ErrorResponse(refusal, headers=[(b"connection", b"close")])(scope, receive, secured)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, secured)

    async def _bounded_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, None when it is larger than allowed (read no further than that), or
        ``_LEFT`` when the client went away before sending all of it."""
        length = header(scope["headers"], b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self._max_body):
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _LEFT
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)
