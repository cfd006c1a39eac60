"""The admin API's answer to a failure nobody foresaw: ``{"error": "internal error"}`` (500), or 503
when the database cannot be used just now (locked past the busy timeout, read-only, full), in the
``/api`` dialect like every other refusal, never a plain-text page.

The traceback is logged (it names code, not request data: no header, no body, so no secret), except
for a database that cannot be used just now: one line with the database's own reason, since a
minute of PostgreSQL restarting would otherwise fill the log with identical tracebacks. An answer
that had already started cannot be replaced; then the failure is only logged.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import DatabaseUnavailable, InternalError
from gateway.routes.responses import ErrorResponse

log = logging.getLogger("gateway.admin")


class LastResort:
    """Pure ASGI, inside FastAPI's exception handlers: what they do not handle ends here (the
    handlers pass every ``InternalError`` on, a database failure among them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as error:  # the last resort: every failure gets an answer, none is decided here
            if isinstance(error, DatabaseUnavailable):
                log.error("admin request %s %s failed: %s", scope.get("method"), scope.get("path"), error)
            else:
                log.error("admin request %s %s failed", scope.get("method"), scope.get("path"), exc_info=error)
            if started or scope["type"] != "http":
                return
            await ErrorResponse(error if isinstance(error, InternalError) else InternalError())(scope, receive, send)
