"""The relay, the gateway's core: pass an upstream's answer to the client, byte for byte (the
request was sent by ``Upstream.send``; which upstream, and whether once more, is the caller's
choice).

It knows nothing of keys, limits or logs. Policies see the exchange through an ``Observer`` that
receives copies of what passes (it must never hold a byte back), and may swap the body through
an optional ``BodyTransform``. "Response started" is the point of no return: before it, failures
propagate as ``GatewayError`` for the caller to render; after it, a stream ends with one error
frame in its own dialect, and a fixed-length body is cut (the client sees it truncated). The same
holds for an exchange ended from outside (the gateway shutting down): its task is cancelled, and
the ``Stop`` it was given names the error that cancellation stands for.

A stream's pieces are relayed as they arrive: where the response can push them (``Pushing``) and
the server offers a ``BodyWriter``, each piece goes from the upstream connection's read callback
straight to the client's connection, with no task switch or ASGI message in between; otherwise,
and whenever the client reads slower than the stream comes, through ``body()`` and ``send``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from starlette.types import Send

from gateway.errors import Dialect, GatewayError, render_in_stream
from gateway.proxy.headers import STREAM_HEADERS, Headers, client_response_headers, header, is_stream
from gateway.proxy.inbound import Inbound
from gateway.proxy.upstream import Pushing, UpstreamResponse

# The scope extension under which the gateway's own server offers its ``BodyWriter``.
WRITER_EXTENSION = "gateway.body_writer"


class Observer(Protocol):
    def response_started(self, status: int, headers: Headers, streaming: bool) -> Callable[[bytes], None] | None:
        """The response's head is going out; returns what is to see a copy of every piece of its
        body, or None when nothing is (a callable handed over once: pieces at tens of streams
        arrive alone, and a call less on each is most of what a piece costs)."""

    def sent(self, size: int) -> None:
        """How many body bytes the client was sent in all (once, when the relay ends)."""

    def failed(self, error: GatewayError) -> None: ...


class Stop(Protocol):
    def claim(self) -> GatewayError | None:
        """On a CancelledError: the error the exchange was ended with from outside (the
        cancellation is then taken back), or None when the cancellation is not its own."""


class BodyTransform(Protocol):
    """Rewrites a response body on its way out (e.g. a stream's added usage frame removed)."""

    def feed(self, data: bytes) -> bytes: ...

    def end(self) -> bytes: ...


class BodyWriter(Protocol):
    """The server's own way to write a chunked response's body to the client at once, from any
    callback (an extension of the gateway's server; the relay uses ``send`` without it)."""

    def serves(self, send: Send) -> bool:
        """Whether ``send`` is the server's own: a writer must not bypass a wrapper around it."""

    def writable(self) -> bool:
        """Whether ``write`` may be called now; False while the client's buffer is full, or when the
        response is not a chunked one in progress: such pieces go through ``send``."""

    def write(self, data: bytes) -> None:
        """One piece of the body, framed and written (dropped if the client has gone, as ``send``
        drops it)."""

    def offer(self, data: bytes) -> bool:
        """``write`` when ``writable``, in one call: False, and nothing written, when not."""

    def starts(self) -> bool:
        """Whether ``start`` may be called now (the response not begun, the client's buffer not
        full)."""

    def start(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response at once, head and body (its length known or not): what ``send`` would
        write for its start and its one body message."""


class Chain:
    """Several transforms, each fed what the one before it let out, in order."""

    def __init__(self, transforms: Sequence[BodyTransform]) -> None:
        self._transforms = tuple(transforms)

    def feed(self, data: bytes) -> bytes:
        for transform in self._transforms:
            if not data:
                break
            data = transform.feed(data)
        return data

    def end(self) -> bytes:
        tail = b""
        for transform in self._transforms:
            tail = (transform.feed(tail) if tail else b"") + transform.end()
        return tail


class _Passage:
    """What every relayed piece goes through: the observer's reader, the transform, the count of
    bytes sent; called with a pushed piece, it also writes it (or refuses it, to go through
    ``send``). The pushed path repeats ``passed`` inline: it runs once per piece, on its own."""

    __slots__ = ("_transform", "seen", "size", "writer")

    def __init__(self, transform: BodyTransform | None) -> None:
        self._transform = transform
        self.seen: Callable[[bytes], None] | None = None
        self.writer: BodyWriter | None = None
        self.size = 0

    def __call__(self, data: bytes) -> bool:
        writer = self.writer
        if writer is None:
            return False
        if self._transform is None:
            # The piece as it came: written if it can be, and only then seen and counted.
            if not writer.offer(data):
                return False
            if self.seen is not None:
                self.seen(data)
            self.size += len(data)
            return True
        # A transform must see each piece once: it is fed only when the piece is sure to go out.
        if not writer.writable():
            return False
        if self.seen is not None:
            self.seen(data)
        data = self._transform.feed(data)
        if data:
            self.size += len(data)
            writer.write(data)
        return True

    def passed(self, data: bytes) -> bytes:
        """What of ``data`` goes to the client (after the observer's reader saw it)."""
        if self.seen is not None:
            self.seen(data)
        if self._transform is not None:
            data = self._transform.feed(data)
        self.size += len(data)
        return data


class ResponseAborted(Exception):
    """Raised after a fixed-length body broke off: the server must drop the connection."""


async def relay(
    response: UpstreamResponse,
    inbound: Inbound,
    send: Send,
    *,
    dialect: Dialect,
    extra_headers: Headers,
    observer: Observer,
    stop: Stop,
    transform: BodyTransform | None = None,
    writer: BodyWriter | None = None,
) -> None:
    passage = _Passage(transform)
    try:
        headers = client_response_headers(response.headers)
        content_type = header(headers, b"content-type")
        streaming = is_stream(content_type)
        if streaming:
            headers.extend(STREAM_HEADERS)
        if transform is not None:
            headers = [(name, value) for name, value in headers if name.lower() != b"content-length"]
        headers.extend(extra_headers)
        passage.seen = observer.response_started(response.status, headers, streaming)
        if (
            not streaming
            and transform is None
            and writer is not None
            and isinstance(response, Pushing)
            and writer.serves(send)
            and writer.starts()
            and (whole := response.whole()) is not None
        ):
            # All of a small answer is here already: out with its head, in one write.
            passage.passed(whole)
            inbound.stop()
            writer.start(response.status, headers, whole)
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        tail = b""
        stream_type = content_type if streaming else None
        if streaming and writer is not None and isinstance(response, Pushing) and writer.serves(send):
            passage.writer = writer
            response.push(passage)
        try:
            async for data in response.body():
                data = passage.passed(data)
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
        except GatewayError as error:
            tail = _broken_off(error, observer, inbound, stream_type, dialect)
        except asyncio.CancelledError:
            ended = stop.claim()
            if ended is None:
                raise
            tail = _broken_off(ended, observer, inbound, stream_type, dialect)
        else:
            if transform is not None:
                tail = transform.end()
        finally:
            if isinstance(response, Pushing):
                response.push(None)
        inbound.stop()
        passage.size += len(tail)
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    finally:
        observer.sent(passage.size)
        await response.aclose()


def _broken_off(
    error: GatewayError, observer: Observer, inbound: Inbound, stream_type: bytes | None, dialect: Dialect
) -> bytes:
    """The frame ending a stream that broke off (``stream_type``: its content type); a fixed-length
    body (None) cannot say so and is cut."""
    observer.failed(error)
    if stream_type is None:
        inbound.stop()
        raise ResponseAborted from error
    # Whatever a transform still holds is half a frame: dropped, the error frame ends it.
    return render_in_stream(error, dialect, event_stream=stream_type.startswith(b"text/event-stream"))
