"""The forwarded routes' own knowledge that the gateway is shutting down.

Every forwarded exchange is entered here while it runs. When the server starts the drain (its
grace period is over, or the exit was forced), each one still open is ended by the gateway itself:
the task running it is cancelled with ``GatewayShutdown`` as the reason, and whoever catches that
cancellation claims the reason and takes the cancellation back, so the exchange can still say
so in its dialect (the relay: an error frame ending the stream; the forwarded routes: a 503) and
write its terminal record. An exchange that arrives once the drain has begun is refused.

It knows tasks and one error: nothing of dialects, keys, limits or the server that starts it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.errors import GatewayShutdown

_MESSAGE = "gateway shutting down"


class Stop:
    """One open exchange, and why it was ended from outside (if it was)."""

    __slots__ = ("_claimed", "_reason", "_task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self._reason: GatewayShutdown | None = None
        self._claimed = False

    def end(self) -> None:
        if self._reason is None:
            self._reason = GatewayShutdown(_MESSAGE)
            self._task.cancel()

    def claim(self) -> GatewayShutdown | None:
        """On a CancelledError: the reason the exchange was ended for, with the cancellation taken
        back (once), or None when the cancellation is someone else's (the client left, the server
        gave up waiting)."""
        if self._reason is None or self._claimed:
            return None
        self._claimed = True
        self._task.uncancel()
        return self._reason


class Drain:
    """The exchanges open now; once started, ends each of them and refuses new ones."""

    def __init__(self) -> None:
        self._open: set[Stop] = set()
        self._started = False
        self._idle: asyncio.Event | None = None

    def enter(self) -> Stop:
        """The current task runs an exchange until ``leave``; refused once the drain has begun."""
        if self._started:
            raise GatewayShutdown(_MESSAGE)
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("an exchange runs in a task")
        stop = Stop(task)
        self._open.add(stop)
        return stop

    def leave(self, stop: Stop) -> None:
        self._open.discard(stop)
        if not self._open and self._idle is not None:
            self._idle.set()

    @property
    def open(self) -> int:
        return len(self._open)

    def start(self) -> None:
        """End every open exchange, and refuse new ones (only the first call does anything)."""
        if self._started:
            return
        self._started = True
        for stop in list(self._open):
            stop.end()

    async def wait(self) -> None:
        """Until no exchange is open."""
        if self._open:
            self._idle = self._idle or asyncio.Event()
            await self._idle.wait()
