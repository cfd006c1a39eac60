"""One request/response over ASGI, with the timing control a faithful fake needs.

Go's net/http sends nothing, not even the status line, until the handler writes for
the first time. `begin()` therefore only stores the status; it goes out together
with the first `write()`. While a handler waits (load delay, gate, token delay,
hang) a watcher task reads `receive()` so a client disconnect is seen at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, MutableMapping

from starlette.types import Message, Receive, Scope, Send

from .behaviour import Behaviour
from .gate import Passage
from .records import BODY_KEEP_LIMIT, RecordedRequest
from .wire import JSON, JSON_UTF8, go_json

# Go switches from Content-Length to chunked once a body outgrows its write buffer.
GO_BUFFER = 2048
_CUT_GRACE = 2.0

Transports = MutableMapping[tuple[str, int], asyncio.Transport]


class Exchange:
    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        record: RecordedRequest,
        knobs: Behaviour,
        transports: Transports,
        on_received: Callable[[RecordedRequest], None],
    ) -> None:
        self.scope = scope
        self.record = record
        self.knobs = knobs
        self.params: dict[str, str] = {}
        self.body = b""
        self.extra_headers: list[tuple[str, str]] = []  # added to every response (CORS)
        self.received = False  # the whole body was read and the request logged
        self.openai = scope["path"].startswith("/v1/")
        self._receive = receive
        self._send = send
        self._transports = transports
        self._on_received = on_received
        self._ended = asyncio.Event()  # client gone, connection cut, or server stopping
        self._gone = asyncio.Event()  # uvicorn reported the connection closed
        self._watcher: asyncio.Task[None] | None = None
        self._pending: Message | None = None
        self._finished = False
        self._cutting = False

    @property
    def method(self) -> str:
        return self.record.method

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    # request side

    async def stream_body(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives, hashing on the way; keeps at most 1 MiB."""
        digest = hashlib.sha256()
        size = 0
        kept: bytearray | None = bytearray()
        more = True
        while more:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._client_left()
                break
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            digest.update(chunk)
            size += len(chunk)
            if kept is not None:
                kept += chunk
                if len(kept) > BODY_KEEP_LIMIT:
                    kept = None
            if chunk:
                yield chunk
        self.record.set_body(size, digest.hexdigest(), None if kept is None else bytes(kept))
        self.received = True
        self._on_received(self.record)
        if not self.ended:
            self._watcher = asyncio.ensure_future(self._watch())

    async def read_body(self) -> bytes:
        parts = [chunk async for chunk in self.stream_body()]
        self.body = b"".join(parts)
        return self.body

    async def drain(self) -> None:
        """Read the body (if nobody did yet) so the request is logged before answering."""
        if not self.received:
            async for _ in self.stream_body():
                pass

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self._finished and not self._cutting:
                    self._client_left()
                self._gone.set()
                self._ended.set()
                return

    def _client_left(self) -> None:
        if not self.record.client_disconnected.is_set():
            self.record.disconnected_at = time.monotonic()
            self.record.client_disconnected.set()
        self._ended.set()

    # waiting

    async def pause(self, seconds: float) -> bool:
        """Sleep unless the exchange ends first; True when it is still alive."""
        if seconds > 0 and not self.ended:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), seconds)
        return not self.ended

    async def hang(self) -> None:
        await self._ended.wait()

    def stop(self) -> None:
        """The server is shutting down: end every wait now."""
        self._ended.set()

    # response side

    def begin(self, status: int, content_type: str | None, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Set the status line; it is sent with the first chunk."""
        pairs = [("content-type", content_type)] if content_type else []
        pairs.extend(headers)
        pairs.extend(self.extra_headers)
        self._pending = {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs],
        }

    async def write(self, data: bytes, *, last: bool = False) -> bool:
        """Send one chunk (and the status line first, if pending); False once the exchange ended."""
        if self.ended:
            return False
        gate = self.knobs.gate
        # Lockstep: a response's first chunk goes out freely, every later one needs a release.
        if gate is not None and self.record.chunks_sent:
            passage = await gate.acquire(self._ended)
            if passage is Passage.TIMED_OUT:
                await self.cut()
            if passage is not Passage.GRANTED:
                return False
        if self.knobs.cut_after is not None and self.record.chunks_sent >= self.knobs.cut_after:
            await self.cut()
            return False
        await self._start()
        await self._send({"type": "http.response.body", "body": data, "more_body": not last})
        self._finished = last
        self.record.chunks_sent += 1
        if gate is not None:
            gate.mark_sent()
        return not self.ended

    async def end(self) -> None:
        """Finish a streamed body (the chunked terminator)."""
        if self.ended or self._finished:
            return
        await self._start()
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        self._finished = True

    async def _start(self) -> None:
        if self._pending is not None:
            self.record.status = self._pending["status"]
            await self._send(self._pending)
            self._pending = None

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """A non-streamed response, framed the way Go frames it."""
        extra = list(headers)
        if status not in (204, 304) and len(body) <= GO_BUFFER:
            extra.append(("content-length", str(len(body))))
        self.begin(status, content_type, extra)
        await self.write(body, last=True)

    async def respond_json(self, status: int, value: object, *, charset: bool = True) -> None:
        """gin's c.JSON: compact, no trailing newline."""
        await self.respond(status, go_json(value), JSON_UTF8 if charset else JSON)

    async def fail(self, status: int, message: str, *, from_stream: bool = False) -> None:
        """An error from a native handler, in the dialect of this route."""
        if self.openai:
            await self.respond(status, go_json(openai_error(status, message)) + b"\n", JSON)
        else:
            await self.respond_json(status, {"error": message}, charset=not from_stream)

    async def cut(self) -> None:
        """Drop the connection: no error line, no terminating chunk."""
        self._cutting = True
        self.record.cut = True
        client = self.record.client
        transport = self._transports.get(client) if client else None
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if self.knobs.cut_reset and sock is not None:
                # Linger 0: close() sends RST, as when the Ollama process is killed under load.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.close()
            # let uvicorn see the connection go, so it does not report a half-sent response
            if self._watcher is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._gone.wait(), _CUT_GRACE)
        self._ended.set()

    async def close(self) -> None:
        """Always called last: settle the connection and stop watching."""
        if not self._finished and not self.record.client_disconnected.is_set() and not self._cutting:
            await self.cut()  # server stopping mid-response
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._finished:
            self.record.completed.set()


def openai_error(status: int, message: str) -> dict[str, object]:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
