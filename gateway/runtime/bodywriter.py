"""The server's ``BodyWriter``: a streamed response's body pieces written to the client's connection
at once, from whatever callback has them (the upstream connection's read), without an ASGI message;
and its ``Departures``: the client's leaving told to a callback, without a task waiting on
``receive()`` for each request.

At tens of open streams each piece arrives alone, and passing it through the handling task (wake
the task, resume the relay, build a message, run ``send``) cost more than relaying it; see
bench/FINDINGS.md. This writes what uvicorn's ``RequestResponseCycle.send`` writes for a body
message of a chunked response, under the same conditions, and declines everything else (a
response not chunked, not started or already complete, a client whose buffer is full) so that it
goes through ``send`` as before. It reads the cycle's state, so the uvicorn version is pinned and
``send`` is among the sources ``http_protocol.py`` records digests of. A small answer that has
all arrived by the time its head goes out (most non-streamed ones) is written whole, head and
body in one write (``start``): one system call and one segment instead of two, and the answer
complete without three trips through ``send``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from starlette.types import Send
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE, RequestResponseCycle

from gateway.proxy.headers import Headers


class CycleWriter:
    __slots__ = ("_cycle", "_left")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        # Weakly: the writer sits in the cycle's own scope, and a cycle of references would keep
        # every request's objects until the collector's next full pass (tests/routes/test_cycles.py).
        self._cycle = weakref.ref(cycle)
        self._left: Callable[[], None] | None = None

    def notify(self, left: Callable[[], None] | None) -> None:
        """Call ``left`` (once) when the connection is lost before the response is complete, at
        once if it already was; None: no longer."""
        self._left = left
        cycle = self._cycle()
        if left is None or cycle is None:
            return
        if cycle.disconnected:
            self.lost()
        elif not cycle.response_complete:
            # As receive() does before waiting: a connection paused (a pipelined request behind
            # this one) must be read, or its end would go unnoticed.
            cycle.flow.resume_reading()

    def lost(self) -> None:
        """The server's side: the connection is gone (the protocol calls this)."""
        left, self._left = self._left, None
        cycle = self._cycle()
        if left is not None and cycle is not None and cycle.disconnected:
            left()

    def serves(self, send: Send) -> bool:
        # A bound method: equal to the cycle's own send, not to a middleware's wrapper around it.
        cycle = self._cycle()
        return cycle is not None and send == cycle.send

    def writable(self) -> bool:
        return self.offer(b"")

    def offer(self, data: bytes) -> bool:
        cycle = self._cycle()
        if cycle is None:
            return False
        if cycle.disconnected:
            return True  # dropped, as send() drops it
        if (
            cycle.flow.write_paused
            or not cycle.response_started
            or cycle.response_complete
            or cycle.chunked_encoding is not True
        ):
            return False
        if data:
            cycle.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        return True

    def starts(self) -> bool:
        cycle = self._cycle()
        return cycle is not None and not cycle.response_started and not cycle.flow.write_paused

    def start(self, status: int, headers: Headers, body: bytes) -> None:
        """``send``'s ``http.response.start`` and its last ``http.response.body`` at once: the head
        and the whole body in one write, the response complete (the same state, checks and errors
        as ``send``). A header list is checked with two searches of its names and values joined,
        where ``send`` runs two per header."""
        cycle = self._cycle()
        if cycle is None or cycle.disconnected:
            return  # dropped, as send() drops it
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        every = cycle.default_headers + headers
        if HEADER_RE.search(b"".join(name for name, _ in every)):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(b"\t".join(value for _, value in every)):
            raise RuntimeError("Invalid HTTP header value.")
        content = [STATUS_LINE[status]]
        has_connection_close = False
        for name, value in every:
            name = name.lower()
            if name == b"content-length" and cycle.chunked_encoding is None:
                cycle.expected_content_length = int(value.decode())
                cycle.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                cycle.expected_content_length = 0
                cycle.chunked_encoding = True
            elif name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
                cycle.keep_alive = False
                has_connection_close = True
            content.extend((name, b": ", value, b"\r\n"))
        if not cycle.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        head_only = cycle.scope["method"] == "HEAD"
        if cycle.chunked_encoding is None and not head_only and status not in (204, 304):
            cycle.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        if head_only:
            cycle.expected_content_length = 0
        elif cycle.chunked_encoding:
            if body:
                content.extend((b"%x\r\n" % len(body), body, b"\r\n"))
            content.append(b"0\r\n\r\n")
        else:
            if len(body) > cycle.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            cycle.expected_content_length -= len(body)
            content.append(body)
        cycle.transport.write(b"".join(content))
        if cycle.expected_content_length != 0:
            raise RuntimeError("Response content shorter than Content-Length")
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()

    def write(self, data: bytes) -> None:
        cycle = self._cycle()
        if data and cycle is not None and not cycle.disconnected:
            cycle.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
