"""The gateway's ASGI entry point: which requests go to Ollama and which are the gateway's own."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from gateway.forwarding import ForwardedRoutes
from gateway.headers import header
from gateway.metrics import Metrics
from gateway.requestid import request_id
from gateway.surfaces import is_forwarded


class Gateway:
    """The ASGI entry point: Ollama's routes go to the forwarded routes, the rest to the FastAPI app.

    The forwarded routes bypass FastAPI's routing and dependency machinery on purpose: they are
    the hot path, and they stream.
    """

    def __init__(self, api: FastAPI, forwarded: ForwardedRoutes, metrics: Metrics, metrics_app: FastAPI) -> None:
        self.api = api
        self.forwarded = forwarded
        self.metrics = metrics
        # Served on its own address when GATEWAY_METRICS_ADDRESS is set (see listeners.py).
        self.metrics_app = metrics_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_forwarded(scope["path"]):
            await self.forwarded(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        rid = request_id(header(scope["headers"], b"x-request-id"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        await self.api(scope, receive, send_with_id)
