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
from gateway.policies.auth import Authenticator, RequestHead
from gateway.proxy.clientaddr import ClientResolver

Guard = Callable[[Request], Awaitable[Principal]]


def admin_scope(authenticator: Authenticator, resolver: ClientResolver) -> Guard:
    async def require_admin(request: Request) -> Principal:
        scope = request.scope
        head = RequestHead(
            scope["method"], scope["path"], scope["query_string"], scope["headers"], resolver.of_scope(scope)
        )
        principal = (await authenticator.authenticate(head)).principal
        if Scope.ADMIN not in principal.scopes:
            raise Forbidden(f"this API key lacks the 'admin' scope required for {request.url.path}")
        return principal

    return require_admin
