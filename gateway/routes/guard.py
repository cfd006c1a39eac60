"""The admin-scope check, as a FastAPI dependency: ``/metrics`` when it is served on the main
listener, and every admin API route (``admin/gate.py`` runs it before a body is read).

It is built from the same ``Authenticator`` and ``ClientResolver`` as the forwarded routes, so a
key, its scopes, a revocation and an address's lockout mean the same on every route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from gateway.errors import Forbidden
from gateway.keys.principal import Principal
from gateway.keys.store import Scope
from gateway.policies.auth import Authenticator
from gateway.proxy.clientaddr import ClientResolver

Guard = Callable[[Request], Awaitable[Principal]]


def admin_scope(authenticator: Authenticator, resolver: ClientResolver) -> Guard:
    async def require_admin(request: Request) -> Principal:
        client = resolver.of_scope(request.scope)
        principal = await authenticator.authenticate(request.scope["headers"], client.ip)
        if Scope.ADMIN not in principal.scopes:
            raise Forbidden(f"this API key lacks the 'admin' scope required for {request.url.path}")
        return principal

    return require_admin
