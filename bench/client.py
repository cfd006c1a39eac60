"""A minimal keep-alive HTTP/1.1 client connection on raw asyncio: a load side that costs little.

One exchange at a time. httptools parses the responses (in C); each read is stamped once with
``time.monotonic_ns()`` on arrival and handed, with the body bytes it held, to the exchange.
Nothing here raises into a future: an exchange always completes, and says why if it failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import cast

import httptools


class Exchange:
    """One request's wait for its response; subclasses look at the body as it arrives."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.sent_ns = 0
        self.end_ns = 0
        self.headers: list[tuple[bytes, bytes]] | None = None  # kept only when set to a list
        self.error: str | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers is not None:
            self.headers.append((name.lower(), value))

    def on_body(self, data: bytes, received_ns: int) -> None:
        pass

    def on_end(self, received_ns: int) -> None:
        self.end_ns = received_ns
        self._finish()

    def on_lost(self, reason: str) -> None:
        if not self.done.done():
            self.error = reason
            self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Buffered(Exchange):
    """Keeps the (small) body."""

    def __init__(self) -> None:
        super().__init__()
        self.body = bytearray()

    def on_body(self, data: bytes, received_ns: int) -> None:
        self.body += data


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._exchange: Exchange | None = None
        self._received_ns = 0
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, host: str, port: int, within: float) -> Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            _, connection = await loop.create_connection(cls, host, port)
        return connection

    def send(self, data: bytes, exchange: Exchange) -> None:
        """Write a request (or its head) and make ``exchange`` wait for the response."""
        if self._transport is None or self._transport.is_closing():
            exchange.on_lost("connection closed")
            return
        self._exchange = exchange
        exchange.sent_ns = time.monotonic_ns()
        self._transport.write(data)

    async def send_body(self, pieces: Iterable[bytes]) -> None:
        """Write body pieces as fast as the peer reads them, no faster."""
        for piece in pieces:
            await self._writable.wait()
            if self._transport is None or self._transport.is_closing():
                return
            self._transport.write(piece)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._transport.set_write_buffer_limits(high=4 << 20)

    def data_received(self, data: bytes) -> None:
        self._received_ns = time.monotonic_ns()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._lost(f"bad response: {error}")
            self.close()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        self._lost("connection lost" if exc is None else f"connection lost: {exc}")
        if not self.closed.done():
            self.closed.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self._exchange is not None:
            self._exchange.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._exchange is not None:
            self._exchange.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._exchange is not None:
            self._exchange.on_body(body, self._received_ns)

    def on_message_complete(self) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.on_end(self._received_ns)

    def _lost(self, reason: str) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.on_lost(reason)


async def close_all(connections: Iterable[Connection], within: float = 5.0) -> None:
    """Close connections and wait (bounded) until the loop has let go of them."""
    waiting = []
    for connection in connections:
        connection.close()
        waiting.append(connection.closed)
    if waiting:
        await asyncio.wait(waiting, timeout=within)
