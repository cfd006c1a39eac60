"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, handing request bodies over uncopied,
bounding request heads, and refusing connections the process cannot afford.

uvicorn appends every body piece the parser delivers to a ``bytearray`` and gives the application
``bytes(that)``: two copies of every byte uploaded, on top of the parser's own. For a relay those
copies are most of the CPU a large upload costs (a 1 GiB blob: about half). Here a piece that
arrives while nothing is waiting is stored as it is, and ``bytes(piece)`` is the piece itself, so
it reaches the application without a copy; pieces arriving while one is already waiting are joined
in a bytearray as before, which the flow control bounds to its 64 KiB high-water mark plus one read.

Neither llhttp nor uvicorn bounds a request head: 10,000 headers were all forwarded upstream, and
a header line that never ends is joined piece by piece (quadratic) by httptools. Here a head with
more than ``MAX_HEADERS`` fields, or whose request target and header names and values add up to
more than ``MAX_HEAD_BYTES``, is answered 431 (in the dialect of its path) and the connection
closed, as soon as the limit is passed. A connection the ``ConnectionGuard`` refuses (the process
is near its file-descriptor limit) is answered 503 and closed before a request is read.

It replaces uvicorn's ``on_body`` and ``data_received`` outright and relies on how
``RequestResponseCycle.receive`` hands ``cycle.body`` over, so the uvicorn version it was checked
against is pinned exactly (pyproject.toml), and a test compares the source of each with the
digests below: read the new code before moving the pin, then record its digests here.
"""

from __future__ import annotations

import asyncio

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.errors import ConnectionsExhausted, Dialect, GatewayError, HeadersTooLarge, render
from gateway.observe.connections import STATE_KEY, ConnectionGuard
from gateway.proxy.inbound import DEPARTURES_EXTENSION
from gateway.proxy.relay import WRITER_EXTENSION
from gateway.runtime.bodywriter import CycleWriter

# SHA-256 of inspect.getsource() of the uvicorn code this module was checked against (0.54.0).
CHECKED_UVICORN_SOURCES = {
    "HttpToolsProtocol.on_body": "dba9c32aeba35b6ae10722f86232d44d93fda42d97711244eeaa51c0a1f3e1c9",
    "HttpToolsProtocol.data_received": "010a7ae59a5d3b1a5e7326ce246878568629d126a076d8af5ba10cab040fae43",
    "RequestResponseCycle.receive": "8124ae006be71184810da91d586b97c4b3b9ae43e28984bc94f81e26d20af3e6",
    # What bodywriter.py writes in its place for a chunked body.
    "RequestResponseCycle.send": "abdd8601b326a8da972436918d3a954e1ef39c6bf0cd9e1c1954c2e798d0bb9c",
}

# Like Apache's LimitRequestFields; nginx's default buffers take 32 KiB of head (4 x 8 KiB).
MAX_HEADERS = 100
MAX_HEAD_BYTES = 32 * 1024


# The longest a refused connection waits for what its client is sending before it is closed.
_DRAIN = 1.0


class _HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing a head past the limits."""


class GatewayHttpProtocol(HttpToolsProtocol):
    _refused = False
    _in_head = False
    _head_fields = 0
    _head_bytes = 0
    # Raw bytes of a head still incomplete after whole reads: a line that never ends is cut here.
    _head_read = 0
    # A message ended within the current read (its bytes are not all the next head's).
    _ended_in_read = False
    # The latest request's extensions (its cycle is the one a lost connection concerns).
    _writer: CycleWriter | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.app_state.get(STATE_KEY)
        sock = transport.get_extra_info("socket")
        if isinstance(guard, ConnectionGuard) and sock is not None and not guard.admits(sock.fileno()):
            error = ConnectionsExhausted("the gateway cannot take more connections now, try again later")
            self._refuse(error, Dialect.NATIVE, retry_after=b"1")

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self.transport.close()  # read, so the close is orderly: the answer has gone out
            return
        self._unset_keepalive_if_required()
        self._ended_in_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _HeadTooLarge):
                self._refuse_head()
            else:
                self._invalid()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and not self._ended_in_read:
            # The whole read is head: its message began at its start or before it.
            self._head_read += len(data)
            # Twice the limit: delimiters and whitespace are not counted by the exact check.
            if self._head_read > 2 * MAX_HEAD_BYTES:
                self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_fields = self._head_bytes = self._head_read = 0

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        self._head_bytes += len(name) + len(value)
        if self._head_fields > MAX_HEADERS or self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            # This request's cycle (none is made for an upgrade): the relay may write its stream's
            # pieces straight to the connection, and hear of the client leaving from here.
            writer = self._writer = CycleWriter(cycle)
            extensions = self.scope.setdefault("extensions", {})
            extensions[WRITER_EXTENSION] = writer  # type: ignore[assignment]
            extensions[DEPARTURES_EXTENSION] = writer  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        writer = self._writer
        if writer is not None:
            self._writer = None
            writer.lost()

    def on_message_complete(self) -> None:
        self._ended_in_read = True
        super().on_message_complete()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        waiting: bytes | bytearray = cycle.body
        if not waiting:
            # uvicorn types this a bytearray; receive() only needs bytes(body) and len().
            cycle.body = body  # type: ignore[assignment]
        else:
            if isinstance(waiting, bytes):
                # Joining: grow a bytearray in place, as uvicorn does (bytes would be copied whole
                # for every piece, quadratic over a read full of tiny chunks).
                waiting = bytearray(waiting)
            waiting += body
            cycle.body = waiting
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def _invalid(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _refuse_head(self) -> None:
        error = HeadersTooLarge(
            f"request header fields too large: at most {MAX_HEADERS} fields and {MAX_HEAD_BYTES} bytes "
            "of request target, header names and values"
        )
        self._refuse(error, Dialect.OPENAI if self.url.startswith(b"/v1/") else Dialect.NATIVE)

    def _refuse(self, error: GatewayError, dialect: Dialect, retry_after: bytes | None = None) -> None:
        """Answer ``error`` and close (the answer goes out first)."""
        self._refused = True
        body = render(error, dialect)
        lines = [
            STATUS_LINE[error.status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            *([b"retry-after: " + retry_after + b"\r\n"] if retry_after else []),
            b"\r\n",
            body,
        ]
        transport = self.transport
        transport.write(b"".join(lines))
        if not transport.can_write_eof():
            transport.close()
            return
        # Closed once what the client sent has been read (or after a moment): a close with unread
        # data would send a reset, and the client could lose the answer.
        transport.write_eof()
        self.loop.call_later(_DRAIN, transport.close)
