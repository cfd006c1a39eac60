"""The client side of one exchange: its request body, and noticing when it goes away.

ASGI only reports a disconnect through ``receive()``, and uvicorn's ``send()`` silently drops
writes to a closed connection, so a stalled upstream (a model loading, a non-streamed generation)
would otherwise keep Ollama busy for nobody. Once the body has been read, a watcher waits on
``receive()`` and cancels the handling task the moment the client leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.types import Receive

from gateway.errors import BodyTooLarge


class ClientDisconnected(Exception):
    """The client went away while its request body was still arriving."""


class Inbound:
    def __init__(self, receive: Receive, *, has_body: bool) -> None:
        self._receive = receive
        self._body_done = not has_body
        self._handler: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None
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

    def _start_watcher(self) -> None:
        if self._body_done and self._handler is not None and self._watcher is None and not self._stopped:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if not self._stopped and self._handler is not None:
            self.gone = True
            self._handler.cancel()
