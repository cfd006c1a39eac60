"""The gateway's ASGI entry point: which requests go to Ollama and which are the gateway's own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.observe.metrics import Metrics
from gateway.ollama.surfaces import is_forwarded
from gateway.proxy.headers import header
from gateway.routes.forwarding import ForwardedRoutes
from gateway.routes.requestid import request_id


class Gateway:
    """The ASGI entry point: Ollama's routes go to the forwarded routes, the rest to the FastAPI app.

    The forwarded routes bypass FastAPI's routing and dependency machinery on purpose: they are
    the hot path, and they stream.
    """

    def __init__(
        self,
        api: FastAPI,
        forwarded: ForwardedRoutes,
        metrics: Metrics,
        metrics_app: FastAPI,
        admin_app: ASGIApp | None = None,
        *,
        close_usage: Callable[[], Awaitable[None]] | None = None,
        listening: asyncio.Event | None = None,
    ) -> None:
        self.api = api
        self.forwarded = forwarded
        self.metrics = metrics
        # Served on its own address when GATEWAY_METRICS_ADDRESS is set (see runtime/listeners.py).
        self.metrics_app = metrics_app
        # The admin surface's own listener (GATEWAY_ADMIN_ADDRESS), else None.
        self.admin_app = WithRequestId(admin_app) if admin_app is not None else None
        # Writes the usage counted so far and closes its store. The lifespan's shutdown does it;
        # the server calls this when a forced exit skips that shutdown.
        self.close_usage = close_usage
        # Set by the server once its sockets listen: the start-up lines wait for it, so that they
        # come after the server's own "running on" line rather than among its lines.
        self.listening = listening or asyncio.Event()
        self._api = WithRequestId(api)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_forwarded(scope["path"]):
            await self.forwarded(scope, receive, send)
            return
        await self._api(scope, receive, send)


class WithRequestId:
    """Gives each HTTP response an ``X-Request-Id`` (the client's own if sane), also kept in the
    request's state for whatever logs the request (the admin audit lines)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(header(scope["headers"], b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = rid.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        await self.app(scope, receive, send_with_id)
