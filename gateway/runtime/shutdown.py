"""The main listener's server: uvicorn's, except that the gateway ends its own requests at shutdown.

On SIGTERM uvicorn stops accepting and lets in-flight requests run; after its
``timeout_graceful_shutdown`` it cancels their tasks, which cuts a stream without its error frame
(the client sees a truncated body). A second Ctrl-C (a forced exit) skips the application's
shutdown, and with it the last usage write. Here the grace period is the gateway's: when it is
over the forwarded routes' drain ends every request still open, in its dialect, and uvicorn's
cancellation comes a little later, for whatever the drain could not end. A forced exit drains at
once, writes the usage counted so far, then exits.

It knows when to drain and what to write before a forced exit, not what draining does to a
request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket

import uvicorn

from gateway.routes.dispatch import Gateway

log = logging.getLogger("gateway.shutdown")

# What a drained request gets to send its last frame and write its record (it only has to send a
# few bytes): then uvicorn cancels it, or a forced exit goes on without it.
_LAST_WORDS = 2.0


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Gateway, *, grace: float) -> None:
        # uvicorn's own deadline becomes the backstop behind the drain.
        config.timeout_graceful_shutdown = math.ceil(grace + _LAST_WORDS)
        super().__init__(config)
        self._app = app
        self._grace = grace

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._app.listening.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain = self._app.forwarded.drain
        deadline = asyncio.get_running_loop().call_later(self._grace, drain.start)
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()
        if self.force_exit:
            await self._forced_exit()

    async def _forced_exit(self) -> None:
        """uvicorn has skipped the application's shutdown: end what is open, write its usage."""
        drain = self._app.forwarded.drain
        drain.start()
        try:
            async with asyncio.timeout(_LAST_WORDS):
                await drain.wait()
        except TimeoutError:
            log.warning("forced exit: %d requests did not end in time, their usage is not counted", drain.open)
        if self._app.close_usage is not None:
            await self._app.close_usage()
