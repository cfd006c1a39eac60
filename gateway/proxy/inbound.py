"""The client side of one exchange: its request body, and noticing when it goes away.

ASGI only reports a disconnect through ``receive()``, and uvicorn's ``send()`` silently drops
writes to a closed connection, so a stalled upstream (a model loading, a non-streamed generation)
would otherwise keep Ollama busy for nobody. Once the body has been read, the handling task is
cancelled the moment the client leaves: the gateway's own server says so through a callback
(``Departures``); under another server a watcher task waits on ``receive()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from starlette.types import Receive

from gateway.errors import BodyTooLarge

# The scope extension under which the gateway's own server offers its ``Departures``.
DEPARTURES_EXTENSION = "gateway.departures"


class ClientDisconnected(Exception):
    """The client went away while its request body was still arriving."""


class Departures(Protocol):
    """The server's own way to say that a request's client has left (an extension of the gateway's
    server): a callback instead of a task per request waiting on ``receive()``."""

    def notify(self, left: Callable[[], None] | None) -> None:
        """Call ``left`` once when the client's connection is lost before the response is
        complete (at once if it already was); None: no longer."""


class Inbound:
    def __init__(self, receive: Receive, *, has_body: bool, departures: Departures | None = None) -> None:
        self._receive = receive
        self._body_done = not has_body
        self._departures = departures
        self._handler: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._notified = False
        self._stopped = False
        self.bytes_in = 0
        # Set when the client left before the response was complete.
        self.gone = False

    async def stream(self, limit: int | None) -> AsyncIterator[bytes]:
        """The request body, chunk by chunk as it arrives; ``BodyTooLarge`` past ``limit``."""
        while not self._body_done:
            chunk = await self._piece(limit)
            if chunk:
                yield chunk

    async def read(self, limit: int) -> bytes:
        pieces = []
        while not self._body_done:
            pieces.append(await self._piece(limit))
        # Most bodies arrive in one piece: no copy then.
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _piece(self, limit: int | None) -> bytes:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.gone = True
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        if chunk:
            self.bytes_in += len(chunk)
            if limit is not None and self.bytes_in > limit:
                raise BodyTooLarge(f"request body is larger than {limit} bytes")
        if not message.get("more_body", False):
            self._body_done = True
            self._start_watcher()
        return chunk

    def watch(self) -> None:
        """Cancel the current task if the client disconnects (from when the body is complete)."""
        self._handler = asyncio.current_task()
        self._start_watcher()

    def stop(self) -> None:
        """The response is complete (or being abandoned): stop watching. Call before the last send."""
        self._stopped = True
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self._notified:
            self._notified = False
            assert self._departures is not None
            self._departures.notify(None)

    def _start_watcher(self) -> None:
        if not self._body_done or self._handler is None or self._stopped:
            return
        if self._departures is not None:
            if not self._notified:
                self._notified = True
                self._departures.notify(self._left)
        elif self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        self._left()

    def _left(self) -> None:
        if not self._stopped and self._handler is not None:
            self.gone = True
            self._handler.cancel()
