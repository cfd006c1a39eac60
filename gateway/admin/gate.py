"""The admin scope, checked before anything else reads the request.

FastAPI parses a JSON body before it runs a route's dependencies, so a guard declared only as a
dependency would let a caller without a key learn how the API judges a body. Here the key is
checked first, in the ASGI layer, for every ``/api/`` path; the routes' own dependency then finds
the principal on the request state and checks nothing twice.
"""

from __future__ import annotations

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import Dialect, GatewayError, render
from gateway.guard import Guard
from gateway.principal import Principal


class Gate:
    def __init__(self, app: ASGIApp, *, guard: Guard, prefix: str = "/api/") -> None:
        self.app = app
        self._guard = guard
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route_path = scope["path"][len(scope.get("root_path", "")) :] if scope["type"] == "http" else ""
        if route_path.startswith(self._prefix):
            request = Request(scope)
            try:
                request.state.principal = await self._guard(request)
            except GatewayError as error:
                body = render(error, Dialect.NATIVE)
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
                ]
                await send({"type": "http.response.start", "status": error.status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def admitted(guard: Guard) -> Guard:
    """The routes' dependency: the principal the gate admitted (or the guard's own check)."""

    async def principal(request: Request) -> Principal:
        found = getattr(request.state, "principal", None)
        if isinstance(found, Principal):
            return found
        checked = await guard(request)
        request.state.principal = checked
        return checked

    return principal
