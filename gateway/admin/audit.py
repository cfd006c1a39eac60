"""One audit line per admin API request, written as its answer starts.

The routes name their action and its target (``request.state.audit``); the guard leaves the
acting key on ``request.state.principal``. A request refused before reaching a route (no key, a
key without the admin scope, a locked-out address, a bad body) is written too, with its method
and path as the action. Successful polls of ``/api/live`` are not: the page asks every few seconds
and they change and export nothing.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.accesslog import AuditLog
from gateway.clientaddr import ClientResolver
from gateway.principal import Principal

_QUIET = frozenset({"/api/live"})


class Audit:
    def __init__(self, app: ASGIApp, *, log: AuditLog, resolver: ClientResolver, prefix: str = "/api/") -> None:
        self.app = app
        self._log = log
        self._resolver = resolver
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route_path = scope["path"][len(scope.get("root_path", "")) :] if scope["type"] == "http" else ""
        if not route_path.startswith(self._prefix):
            await self.app(scope, receive, send)
            return
        written = False

        def write(status: int) -> None:
            nonlocal written
            written = True
            if not (status < 400 and scope["method"] == "GET" and route_path in _QUIET):
                self._write(scope, scope.get("state", {}), status)

        async def watched(message: Message) -> None:
            # Written as the answer starts, so the line exists before the client has the answer.
            if message["type"] == "http.response.start":
                write(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            if not written:
                write(500)  # failed before answering

    def _write(self, scope: Scope, state: dict[str, object], status: int) -> None:
        principal = state.get("principal")
        acting = principal if isinstance(principal, Principal) else None
        named = state.get("audit")
        action, target = named if isinstance(named, tuple) else (f"{scope['method']} {scope['path']}", None)
        self._log(
            action=str(action),
            target=None if target is None else str(target),
            status=status,
            key_id=acting.key_id if acting else None,
            key_name=acting.name if acting else None,
            client=self._resolver.of_scope(scope).ip,
            request_id=str(state.get("request_id", "")),
        )
