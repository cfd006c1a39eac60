"""The ASGI app: gin-like routing, the opt-in host/CORS guard, and dispatch."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from starlette.types import Receive, Scope, Send

from . import blobs, embed, manage, native, progress, v1
from .behaviour import Behaviour
from .catalog import Catalog
from .exchange import Exchange, Transports
from .generation import Clock, prepare
from .hostcheck import PREFLIGHT_HEADERS, cors_headers
from .records import RecordedRequest, RequestLog
from .wire import HTML_UTF8, TEXT

Handler = Callable[[Exchange, Catalog], Awaitable[None]]

# Ollama's registration order; gin lists allowed methods in the order their trees were created.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("HEAD", "/", manage.root),
    ("GET", "/", manage.root),
    ("HEAD", "/api/version", manage.version),
    ("GET", "/api/version", manage.version),
    ("POST", "/api/pull", progress.pull),
    ("POST", "/api/push", progress.push),
    ("HEAD", "/api/tags", manage.tags),
    ("GET", "/api/tags", manage.tags),
    ("POST", "/api/show", manage.show),
    ("DELETE", "/api/delete", manage.delete),
    ("POST", "/api/create", progress.create),
    ("POST", "/api/blobs/:digest", blobs.upload),
    ("HEAD", "/api/blobs/:digest", blobs.head),
    ("POST", "/api/copy", manage.copy),
    ("GET", "/api/ps", manage.ps),
    ("POST", "/api/generate", native.generate),
    ("POST", "/api/chat", native.chat),
    ("POST", "/api/embed", embed.embed),
    ("POST", "/api/embeddings", embed.embeddings),
    ("POST", "/v1/chat/completions", v1.chat_completions),
    ("POST", "/v1/completions", v1.completions),
    ("POST", "/v1/embeddings", v1.embeddings),
    ("GET", "/v1/models", v1.models),
    ("GET", "/v1/models/:model", v1.model),
)
METHOD_ORDER = ("HEAD", "GET", "POST", "DELETE")
STREAMED_UPLOADS: frozenset[Handler] = frozenset({blobs.upload})
# These apply load delay and forced errors after their own validation, like Ollama.
SELF_TIMED: frozenset[Handler] = frozenset(
    {
        native.generate,
        native.chat,
        embed.embed,
        embed.embeddings,
        progress.pull,
        progress.push,
        progress.create,
        v1.chat_completions,
        v1.completions,
        v1.embeddings,
    }
)


def _match(pattern: str, path: str) -> dict[str, str] | None:
    wanted, actual = pattern.split("/"), path.split("/")
    if len(wanted) != len(actual):
        return None
    params: dict[str, str] = {}
    for part, segment in zip(wanted, actual, strict=True):
        if part.startswith(":"):
            if not segment:
                return None
            params[part[1:]] = segment
        elif part != segment:
            return None
    return params


def resolve(method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
    for route_method, pattern, handler in ROUTES:
        if route_method == method and (params := _match(pattern, path)) is not None:
            return handler, params
    return None


class FakeApp:
    def __init__(self, catalog: Catalog, log: RequestLog, behaviour: Callable[[], Behaviour]) -> None:
        self.transports: Transports = {}
        self._catalog = catalog
        self._log = log
        self._behaviour = behaviour
        self._live: set[Exchange] = set()
        self._stopping = False

    def stop_all(self) -> None:
        """Runs on the server loop when the fake stops: every wait ends now."""
        self._stopping = True
        for exchange in list(self._live):
            exchange.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        record = RecordedRequest.from_scope(scope)
        behaviour = dataclasses.replace(self._behaviour())  # later edits do not reach this request
        knobs = behaviour if behaviour.applies_to(record.path) else Behaviour()
        exchange = Exchange(scope, receive, send, record, knobs, self.transports, self._log.append)
        self._live.add(exchange)
        if self._stopping:
            exchange.stop()
        try:
            await self._dispatch(exchange, behaviour.host_check)
        finally:
            self._live.discard(exchange)
            await exchange.close()

    async def _dispatch(self, ex: Exchange, host_check: bool) -> None:
        found = resolve(ex.method, ex.record.path)
        if found is None or found[0] not in STREAMED_UPLOADS:
            await ex.read_body()
        if host_check and not await self._guard(ex):
            return
        if found is None:
            await ex.drain()
            await _router_miss(ex)
            return
        if ex.knobs.hang:
            await ex.drain()
            await ex.hang()
            return
        if ex.ended:
            return
        handler, ex.params = found
        if handler not in SELF_TIMED and not await prepare(ex, Clock()):
            return
        await handler(ex, self._catalog)

    async def _guard(self, ex: Exchange) -> bool:
        """Ollama's CORS and Host middleware; False when it already answered."""
        headers = cors_headers(ex.record)
        if headers is None:
            await ex.drain()
            await ex.respond(403)
            return False
        ex.extra_headers = headers
        if headers and ex.method == "OPTIONS":
            await ex.respond(204, headers=PREFLIGHT_HEADERS)
            return False
        return True


async def _router_miss(ex: Exchange) -> None:
    """gin's defaults: trailing-slash redirect, 405 with Allow, or 404, as text/plain."""
    method, path = ex.method, ex.record.path
    if path != "/" and path.endswith("/") and resolve(method, path[:-1]) is not None:
        target = path[:-1] + (f"?{ex.record.query}" if ex.record.query else "")
        code = 301 if method == "GET" else 307
        location = [("location", target)]
        if method == "GET":
            body = f'<a href="{html.escape(target)}">{HTTPStatus(code).phrase}</a>.\n\n'.encode()
            await ex.respond(code, body, HTML_UTF8, location)
            return
        await ex.respond(code, b"", HTML_UTF8 if method == "HEAD" else None, location)
        return
    allowed = [m for m in METHOD_ORDER if m != method and resolve(m, path) is not None]
    if allowed:
        await ex.respond(405, b"405 method not allowed", TEXT, [("allow", ", ".join(allowed))])
        return
    await ex.respond(404, b"404 page not found", TEXT)
