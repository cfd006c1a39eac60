"""One audit line per admin API request, written as its answer starts.

The routes name their action and its target (``request.state.audit``, an ``AuditNote``); the
guard leaves the acting key on ``request.state.principal``. A request refused before reaching a
route (no key, a key without the admin scope, a locked-out address, a bad body) is written too,
with its method and path as the action. A client that leaves before its answer is written with
499 (nginx's convention), not as a failure of ours. Successful polls of ``/api/live`` are not
written: the page asks every few seconds and they change and export nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.keys.principal import Principal
from gateway.observe.accesslog import AuditLog
from gateway.proxy.clientaddr import ClientResolver

_QUIET = frozenset({"/api/live"})
CLIENT_CLOSED = 499


@dataclass(frozen=True, slots=True)
class AuditNote:
    """What a route did: its action, the key id it acted on (and that key's name), and the names
    of the fields it changed (never their values)."""

    action: str
    target: str | None = None
    target_name: str | None = None
    changed: list[str] = field(default_factory=list)


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
        left = False

        def write(status: int) -> None:
            nonlocal written
            written = True
            if not (status < 400 and scope["method"] == "GET" and route_path in _QUIET):
                self._write(scope, scope.get("state", {}), status)

        async def watched_receive() -> Message:
            nonlocal left
            message = await receive()
            left = left or message["type"] == "http.disconnect"
            return message

        async def watched(message: Message) -> None:
            # Written as the answer starts, so the line exists before the client has the answer.
            if message["type"] == "http.response.start":
                write(CLIENT_CLOSED if left else message["status"])
            await send(message)

        try:
            await self.app(scope, watched_receive, watched)
        except asyncio.CancelledError:
            left = True
            raise
        finally:
            if not written:
                write(CLIENT_CLOSED if left else 500)  # ended before answering

    def _write(self, scope: Scope, state: dict[str, object], status: int) -> None:
        principal = state.get("principal")
        acting = principal if isinstance(principal, Principal) else None
        note = state.get("audit")
        if not isinstance(note, AuditNote):
            note = AuditNote(f"{scope['method']} {scope['path']}")
        self._log(
            action=note.action,
            target=note.target,
            target_name=note.target_name,
            changed=note.changed,
            status=status,
            key_id=acting.key_id if acting else None,
            key_name=acting.name if acting else None,
            client=self._resolver.of_scope(scope).ip,
            request_id=str(state.get("request_id", "")),
        )
