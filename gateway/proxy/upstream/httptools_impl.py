"""The upstream client on httptools: keep-alive HTTP/1.1 connections to the one Ollama.

The gateway always talks to the same origin, with a request it has already checked, and relays
the answer untouched, so a general-purpose client's per-request machinery (URL objects, cookie,
redirect, proxy and header bookkeeping) is pure cost: aiohttp spent ~0.26 ms of CPU per small
request where writing the bytes and parsing the answer cost ~0.03 ms (README, Performance).
Parsing and framing stay in llhttp, the C parser uvicorn uses on the client side; this module
writes requests and reads answers (flow control, timeouts, reuse decisions); the connections and
their pool are in ``connections.py``.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from urllib.parse import urlsplit

import httptools

from gateway.errors import UpstreamBroken, UpstreamNotReached, UpstreamUnavailable
from gateway.proxy.headers import Headers, header
from gateway.proxy.upstream import Outbound, Pushing, lost, malformed, misframed, timed_out, unreachable
from gateway.proxy.upstream.connections import Closed, Connection, Pool

# Bytes of response held for a slow client before the upstream socket stops being read.
_HIGH_WATER = 1024 * 1024
# The largest answer handed over whole once it has all arrived (joined with its head).
_WHOLE_LIMIT = 64 * 1024
# Methods whose request may be sent again when a kept-alive connection ended unanswered.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
# Methods that carry no body unless one is given (no "content-length: 0" for them).
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class _Response(Pushing):
    """One exchange: the parser's callbacks on one side, the relay's body iterator (or its sink)
    on the other."""

    def __init__(self, pool: Pool, conn: Connection, method: str, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        # The parser holds this object's callbacks, and this object the parser: a cycle that
        # aclose() breaks, so an exchange is freed when it ends, not by the cyclic collector.
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head_only = method == "HEAD"
        self._read_timeout = read_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Callable[[bytes], bool] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._framed = False  # Content-Length or chunked: the body does not end at EOF
        self._keep_alive = False
        self._released = False
        self.received = 0
        self.status = 0
        self.headers: Headers = []
        self.started = False
        self.complete = False
        self.request_sent = False
        self.error: BaseException | None = None
        # The task writing a streamed request body, while it runs.
        self.writer: asyncio.Task[None] | None = None

    # The parser's callbacks. After the answer is complete they ignore everything: a second
    # message begins with on_message_begin (marked there), and body bytes after a HEAD answer
    # arrive on a connection already marked not to be reused.
    def on_message_begin(self) -> None:
        if self.complete:
            self._spurious()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete or self.started:
            return  # trailers after a chunked body: the head has gone to the client already
        # Lower-cased as ASGI has them: Go writes canonical names (``Content-Type``), and every
        # look-up above this seam compares lower-case names.
        lowered = name.lower()
        self.headers.append((lowered, value))
        if lowered == b"content-length" or lowered == b"transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        assert self._parser is not None  # callbacks come from the parser itself
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self.headers = []
            self._framed = False
            return
        self.status = status
        self.started = True
        if self._head_only:
            # No body follows a HEAD answer, whatever its Content-Length says.
            self._finish(keep_alive=False)
        else:
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        sink = self._sink
        if sink is not None and not self._chunks:
            waiter = self._waiter
            # Only while the reader waits for a piece (not while it is still sending the last one,
            # nor once it has been cancelled): so pieces keep their order, and none goes out after
            # the relay has stopped.
            if waiter is not None and not waiter.done() and sink(body):
                return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.started and not self.complete and self._parser is not None:
            self._finish(keep_alive=self._parser.should_keep_alive())

    def _spurious(self) -> None:
        # Bytes after the end of the answer (or after a HEAD answer): never relayed, and the
        # connection is not trusted with another exchange.
        self._keep_alive = False

    # Events from the connection.
    def feed(self, data: bytes) -> None:
        if self.complete or self.error is not None or self._parser is None:
            self._spurious()
            return
        self.received += len(data)
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._malformed()

    def _malformed(self) -> None:
        if self.complete:
            self._spurious()  # junk after a complete answer: that answer stands
        else:
            self._fail(malformed())

    def ended(self, exc: Exception | None) -> None:
        """The upstream closed its side (EOF) or the connection is gone."""
        if self.complete or self.error is not None:
            return
        if self.started and not self._framed and exc is None:
            # A body delimited by the connection's end (HTTP/1.0 style): this is its end.
            self._finish(keep_alive=False)
        elif self.started:
            self._fail(lost())
        else:
            self._fail(unreachable(self._pool.address))

    def sent(self) -> None:
        """The request is fully written: from now on the upstream must keep answering."""
        self.request_sent = True
        if self._read_timeout is not None and not self.complete and self.error is None:
            self._last_read = self._loop.time()
            self._timer = self._loop.call_at(self._last_read + self._read_timeout, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        if self.complete or self.error is not None or self._read_timeout is None:
            return
        due = self._last_read + self._read_timeout
        if self._paused or self._loop.time() < due:
            # Data arrived meanwhile, or our own client is the slow one: look again later.
            base = self._loop.time() if self._paused else self._last_read
            self._timer = self._loop.call_at(base + self._read_timeout, self._check_idle)
            return
        self._fail(timed_out())

    def _finish(self, *, keep_alive: bool) -> None:
        self.complete = True
        self._keep_alive = keep_alive
        self._stop_timer()
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self._stop_timer()
        self._conn.close()
        self._wake()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Until the next event (bytes, the head, the end, an error, the body writer)."""
        self._waiter = self._loop.create_future()
        await self._waiter

    def writer_done(self, task: asyncio.Task[None]) -> None:
        """The streamed request body ended: sent, or failed (read here, so never left unread)."""
        error = None if task.cancelled() else task.exception()
        if self._released:
            return  # the exchange is over: nothing to end, and no cycle to make again
        if error is not None and self.started and not self.complete and self.error is None:
            # The answer had begun (Ollama may answer before the body is complete): end it.
            self._fail(error if not isinstance(error, Closed) else lost())
        self._wake()

    # The relay's side (the UpstreamResponse protocol).
    def push(self, sink: Callable[[bytes], bool] | None) -> None:
        self._sink = sink

    def whole(self) -> bytes | None:
        if not self.complete or self.error is not None or self._buffered > _WHOLE_LIMIT:
            return None
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return body

    async def body(self) -> AsyncIterator[bytes]:
        chunks = self._chunks
        while True:
            if chunks:
                data = chunks.popleft()
                self._buffered -= len(data)
                if self._paused and not chunks and self._conn.transport is not None:
                    self._paused = False
                    self._conn.transport.resume_reading()
                yield data
            elif self.error is not None:
                raise self.error
            elif self.complete:
                return
            else:
                await self.wait()

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        self._stop_timer()
        writer = self.writer
        writing = writer is not None and not writer.done()
        if writer is not None and writing:
            writer.cancel()
        self._conn.exchange = None
        reusable = (
            not writing
            and self.complete
            and self.request_sent  # a half-sent body would prefix the next request
            and self.error is None
            and self._keep_alive
            and not self._paused  # nobody else would resume reading
            and not self._chunks
            and self._conn.usable()
            and self._conn.idle_writer()
        )
        if reusable:
            self._pool.release(self._conn)
        else:
            self._pool.discard(self._conn)
        # Break the cycles an ended exchange would otherwise keep (see __init__; a raised error's
        # traceback holds the body() frame that holds this object; the sink, the relay's frame).
        self._parser = None
        self._sink = None
        self.error = None
        self.writer = None


class HttptoolsUpstream:
    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float | None,
        write_timeout: float | None,
        max_connections: int,
    ) -> None:
        parts = urlsplit(base_url)
        tls = ssl.create_default_context() if parts.scheme == "https" else None
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if tls is not None else 80)
        self._prefix = parts.path.rstrip("/").encode("ascii")
        self._host = parts.netloc.encode("ascii")
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._pool = Pool(host, port, tls, limit=max_connections, connect_timeout=connect_timeout)

    async def send(self, request: Outbound) -> _Response:
        fresh = False
        while True:
            conn = await self._pool.acquire(fresh=fresh)
            response = _Response(self._pool, conn, request.method, self._read_timeout)
            try:
                await self._exchange(conn, response, request)
            except UpstreamUnavailable as error:
                # A kept-alive connection found closed before any answer: once more, on a new one
                # (whatever the method, when not a byte of the request was written).
                unsent = isinstance(error, UpstreamNotReached)
                if fresh or isinstance(error, UpstreamBroken) or not (unsent or _may_retry(conn, response, request)):
                    raise
                fresh = True
                continue
            return response

    async def _exchange(self, conn: Connection, response: _Response, request: Outbound) -> None:
        conn.exchange = response
        try:
            body = request.body
            if isinstance(body, bytes):
                length = None if not body and request.method in _BODILESS else str(len(body)).encode()
                # Handed to the transport whole, not awaited: Ollama may answer (413, an error)
                # before it has read a large body, and that answer must win. A connection with
                # bytes still unsent is never reused (see aclose).
                # Head and body in one write, not joined (that would copy a body of 100 MiB at most):
                # a small request then leaves in one segment, and Ollama reads it in one wake-up.
                head = self._head(request, length)
                if not (conn.send(head, body) if body else conn.send(head)):
                    # Gone before a byte was written: the request never left.
                    raise unreachable(self._pool.address, ConnectionResetError(errno.ECONNRESET, "Connection reset"))
                response.sent()
            else:
                length = header(request.headers, b"content-length")
                declared = int(length) if length is not None and length.isdigit() else None
                head = self._head(request, None if declared is None else b"%d" % declared, chunked=declared is None)
                response.writer = asyncio.get_running_loop().create_task(
                    self._write_body(conn, response, head, body, declared=declared)
                )
                response.writer.add_done_callback(response.writer_done)
            while not response.started:
                if response.error is not None:
                    raise response.error
                writer = response.writer
                if writer is not None and writer.done():
                    response.writer = None
                    error = writer.exception()
                    if error is not None and not isinstance(error, Closed):
                        # The client's body failed (too large, client gone) or could not be sent in time.
                        raise error
                    continue
                await response.wait()
        except BaseException:
            # The same end as a relayed answer's: writer and read timer stopped, connection dropped.
            await response.aclose()
            raise

    async def _write_body(
        self,
        conn: Connection,
        response: _Response,
        head: bytes,
        body: AsyncIterable[bytes],
        *,
        declared: int | None,
    ) -> None:
        chunked = declared is None
        await conn.write(head, self._write_timeout)
        written = 0
        async for piece in body:
            if piece:
                written += len(piece)
                if declared is not None and written > declared:
                    break
                await conn.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece, self._write_timeout)
        if declared is not None and written != declared:
            # Never let a body run past (or stop short of) its framing: the bytes would be read
            # as (part of) another request on this connection.
            raise misframed()
        if chunked:
            await conn.write(b"0\r\n\r\n", self._write_timeout)
        response.sent()

    def _head(self, request: Outbound, length: bytes | None, *, chunked: bool = False) -> bytes:
        lines = [
            b"%s %s%s HTTP/1.1\r\nhost: %s\r\n"
            % (request.method.encode("ascii"), self._prefix, request.target.encode("ascii"), self._host)
        ]
        lines.extend(b"%s: %s\r\n" % pair for pair in request.headers if pair[0] != b"content-length")
        if length is not None:
            lines.append(b"content-length: %s\r\n" % length)
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def aclose(self) -> None:
        self._pool.close()


def _may_retry(conn: Connection, response: _Response, request: Outbound) -> bool:
    """A kept-alive connection that ended before a single answer byte, after the request went out.

    The upstream may have read the request before it went away (a crash, a restart, a balancer's
    idle timeout cutting a long ``stream:false`` generation), so only a request that is safe to
    repeat goes again, once, on a new connection; a POST would run a generation, or a delete,
    twice. The race Ollama's own close could cause is closed before sending instead: a connection
    the upstream has already closed is never reused (``Connection.stale``). Only a body held whole
    in memory can be sent again; a streamed one is partly consumed."""
    return conn.reused and response.received == 0 and request.method in _IDEMPOTENT and isinstance(request.body, bytes)
