"""The admin scope, checked before anything else reads the request.

FastAPI parses a JSON body before it runs a route's dependencies, so a guard declared only as a
dependency would let a caller without a key learn how the API judges a body. Here the key is
checked first, in the ASGI layer, for every ``/api/`` path; the routes' own dependency then finds
the principal on the request state and checks nothing twice.

Credentials a browser adds on its own never reach the admin API (defence in depth: no cookie
authenticates anyway). HTTP Basic is one (a browser that once signed in to the gateway with it
resends it to the same host), so the admin API takes a key only as a bearer token or
``X-API-Key``; and a browser's request that another site started (``Sec-Fetch-Site: cross-site``
or ``same-site``) is refused before its key is looked at.
"""

from __future__ import annotations

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import Forbidden, GatewayError, Unauthorized
from gateway.keys.principal import Principal
from gateway.policies.auth import CHALLENGE
from gateway.proxy.headers import Headers, header
from gateway.routes.guard import Guard
from gateway.routes.responses import ErrorResponse


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
                _refuse_ambient(scope["headers"])
                request.state.principal = await self._guard(request)
            except GatewayError as error:
                await ErrorResponse(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _refuse_ambient(headers: Headers) -> None:
    site = header(headers, b"sec-fetch-site")
    if site is not None and site.strip().lower() not in (b"same-origin", b"none"):
        raise Forbidden("the admin API refuses requests started by another site")
    authorization = header(headers, b"authorization")
    if authorization is not None and authorization.strip()[:6].lower() == b"basic ":
        raise Unauthorized("the admin API takes a key as Authorization: Bearer or X-API-Key", headers=CHALLENGE)


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
