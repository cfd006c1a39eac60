"""Kept-alive TCP connections to the one upstream, and the pool that caps and reuses them.

A connection carries bytes in and out for one exchange at a time and knows nothing of HTTP: what
arrives goes to the current ``Exchange`` (the parser side), and its end is reported there too.
"""

from __future__ import annotations

import asyncio
import select
import ssl
from collections import deque
from typing import Protocol, cast

from gateway.proxy.upstream import authority, busy, connect_timed_out, timed_out, unreachable

WRITE_HIGH_WATER = 4 * 1024 * 1024


class Exchange(Protocol):
    def feed(self, data: bytes) -> None: ...

    def ended(self, exc: Exception | None) -> None:
        """The upstream closed its side (EOF) or the connection is gone."""


class Closed(Exception):
    """The connection closed under a write (the reason reaches the exchange by itself)."""


class Connection(asyncio.Protocol):
    """One TCP connection to Ollama; carries one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.closed = False
        self.reused = False
        self.counted = True  # holds one of the pool's connection slots
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its interface.
        self.transport = cast(asyncio.Transport, transport)
        # Room for a few upload pieces in flight, so reading the client's next piece overlaps
        # with the kernel sending this one (the default 64 KiB stops the relay at every piece).
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:
            # Bytes nobody asked for: the connection can no longer be trusted with framing.
            self.close()
            return
        self.exchange.feed(data)

    def eof_received(self) -> bool:
        if self.exchange is not None:
            self.exchange.ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # The transport holds this protocol: drop the reference back, so both go with the last
        # other reference rather than at the cyclic collector's next pass.
        self.transport = None
        if self.exchange is not None:
            self.exchange.ended(exc)
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)  # the writer finds the connection closed
        self._pool.forget(self)

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def stale(self) -> bool:
        """An idle connection with something to read: the upstream closed it (or sent bytes nobody
        asked for) and the event loop has not handled that yet. Asked just before reuse, so a
        request is never written to a connection the upstream has already given up."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        # poll, not select: a busy gateway's sockets are numbered past select's 1024.
        poller = select.poll()
        try:
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True  # a socket that cannot even be asked is no socket to reuse

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def idle_writer(self) -> bool:
        """Everything written has left for the socket (nothing half-sent would prefix a reuse)."""
        return self.transport is not None and self.transport.get_write_buffer_size() == 0

    def send(self, *pieces: bytes) -> bool:
        """Hand ``pieces`` to the transport, in one system call when it can take them at once
        (uvloop writes a list with one ``writev``, without joining it)."""
        if not self.usable():
            return False
        assert self.transport is not None
        if len(pieces) == 1:
            self.transport.write(pieces[0])
        else:
            self.transport.writelines(pieces)
        return True

    async def write(self, data: bytes, limit: float | None) -> None:
        if not self.send(data):
            raise Closed
        if self._drained is not None:
            try:
                async with asyncio.timeout(limit):
                    await asyncio.shield(self._drained)
            except TimeoutError:
                raise timed_out() from None
            if self.closed:
                raise Closed

    def close(self) -> None:
        # abort(), not close(): nothing half-sent is worth flushing, and Ollama should see the
        # connection end now, not after a stuck upload drains.
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Idle kept-alive connections, and a cap on how many may be open at once."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, *, limit: int, connect_timeout: float) -> None:
        self._host = host
        self._port = port
        self.address = authority(host, port)
        self._tls = tls
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._idle: deque[Connection] = deque()
        self._open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def acquire(self, *, fresh: bool = False) -> Connection:
        deadline = asyncio.get_running_loop().time() + self._connect_timeout
        while True:
            while self._idle and not fresh:
                # The most recently used first: the least likely to have been closed meanwhile.
                conn = self._idle.pop()
                if conn.usable() and not conn.stale():
                    conn.reused = True
                    return conn
                self.discard(conn)
            if self._open < self._limit:
                break
            if self._idle:
                # A new connection is wanted and idle ones fill the cap: make room.
                self.discard(self._idle.popleft())
                continue
            await self._slot(deadline)
        self._open += 1
        made: list[Connection] = []

        def connection() -> Connection:
            made.append(Connection(self))
            return made[0]

        try:
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.get_running_loop().create_connection(
                    connection,
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                )
        except BaseException as error:
            # Give the slot back exactly once, whether or not the socket had been made.
            if made:
                self.discard(made[0])
            else:
                self._free()
            if isinstance(error, TimeoutError):
                raise connect_timed_out(self.address) from None
            if isinstance(error, OSError):
                raise unreachable(self.address, error) from error
            raise
        return made[0]

    async def _slot(self, deadline: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self._wake()  # woken, but leaving before using the turn: pass it on
            if isinstance(error, TimeoutError):
                raise busy(self.address) from None
            raise
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

    def release(self, conn: Connection) -> None:
        """The exchange ended cleanly: keep the connection for the next one."""
        conn.exchange = None
        if self._closed:
            self.discard(conn)
            return
        if conn.closed:
            return
        self._idle.append(conn)
        self._wake()

    def discard(self, conn: Connection) -> None:
        """Close a connection that is half-used or broken (that is how Ollama learns to stop)."""
        conn.close()
        self._drop(conn)

    def forget(self, conn: Connection) -> None:
        """The connection closed (either side)."""
        if conn in self._idle:
            self._idle.remove(conn)
        self._drop(conn)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self.discard(self._idle.pop())

    def _drop(self, conn: Connection) -> None:
        if conn.counted:
            conn.counted = False
            self._free()

    def _free(self) -> None:
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
