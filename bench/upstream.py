"""The fast fake Ollama: raw asyncio protocol + httptools on uvloop, far cheaper than the gateway.

It must never be the slow part of a measurement, so it parses with httptools (C), writes
pre-formatted bytes and keeps no per-request objects beyond one small stream state.

Routes:
- ``GET /api/version``
- ``GET /api/tags`` and ``GET /api/ps``: the one model the benchmark asks for (``bench:latest``),
  installed and loaded, so that a gateway fronting several of these routes to them (it routes a
  request naming a model to a server whose ``/api/tags`` lists it); with ``--models N``,
  ``/api/tags`` lists N - 1 more (``model-0000:latest``, ...), a fleet with many fine-tunes
- ``POST /api/chat`` and ``POST /v1/chat/completions``: a small JSON answer, or with
  ``stream:true`` a stream of stamped tokens (see stamps.py). Tokens come from
  ``options.num_predict`` / ``max_tokens``; ``bench.interval_ms`` spaces them and ``bench.tag``
  names the stream for hang-up timing. The first token leaves with the headers, as with Ollama.
  ``bench.cut_after`` K makes it drop the connection when token K is due (K tokens went out, one
  interval before), with an orderly close, or a reset when ``bench.cut`` is ``"rst"``: an Ollama
  that crashed or was killed mid-stream.
- ``POST /api/blobs/<digest>``: the body is counted, never kept; ``201`` once it is all read.
- ``GET /_bench/closed``: control route for the harness (never through the gateway): the
  ``monotonic_ns`` at which each tagged, unfinished stream saw its connection close; cleared on read.

Run as ``python -m bench.upstream``; it prints ``READY host:port`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import uvloop

from bench.stamps import Format, ending, token
from gateway.runtime.allocator import keep_large_blocks

READY = "bench-upstream listening on"
MAX_JSON_BODY = 1 << 20

_CHAT_REPLY = (
    b'{"model":"bench","created_at":"2026-01-01T00:00:00.000000001Z","message":{"role":"assistant",'
    b'"content":"The sky is blue because of Rayleigh scattering."},"done":true,"done_reason":"stop",'
    b'"total_duration":51234567,"load_duration":1234567,"prompt_eval_count":8,"prompt_eval_duration":1234567,'
    b'"eval_count":11,"eval_duration":41234567}'
)
_OPENAI_REPLY = (
    b'{"id":"chatcmpl-7","object":"chat.completion","created":1767225600,"model":"bench",'
    b'"system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"The sky is blue because of Rayleigh scattering."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":8,"completion_tokens":11,"total_tokens":19}}\n'
)
_VERSION_REPLY = b'{"version":"0.33.0"}'
# The model every benchmark request names ("bench"), as Ollama lists it (wire facts §2).
_MODEL = (
    b'"name":"bench:latest","model":"bench:latest","size":1,"digest":"' + b"be" * 32 + b'",'
    b'"details":{"parent_model":"","format":"gguf","family":"bench","families":["bench"],'
    b'"parameter_size":"1B","quantization_level":"Q4_K_M"}'
)
_PS_REPLY = b'{"models":[{' + _MODEL + b',"expires_at":"2099-01-01T00:00:00Z","size_vram":1,"context_length":4096}]}'


def _other_model(number: int) -> bytes:
    """One more installed model, shaped as the one the requests name (the scale scenario's listings)."""
    name = b"model-%04d:latest" % number
    return (
        b'{"name":"%s","model":"%s","size":%d,"digest":"%064x","details":{"parent_model":"","format":"gguf",'
        b'"family":"llama","families":["llama"],"parameter_size":"8B","quantization_level":"Q4_K_M"},'
        b'"modified_at":"2026-01-01T00:00:00Z"}' % (name, name, 4_000_000_000 + number, number)
    )


def listings(models: int) -> dict[bytes, bytes]:
    """The GET routes' answers; ``/api/tags`` lists ``models`` models, ``bench:latest`` first."""
    installed = [b"{" + _MODEL + b',"modified_at":"2026-01-01T00:00:00Z"}']
    installed += [_other_model(number) for number in range(max(models, 1) - 1)]
    tags = b'{"models":[' + b",".join(installed) + b"]}"
    return {b"/api/version": _VERSION_REPLY, b"/api/tags": tags, b"/api/ps": _PS_REPLY}


_STREAM_TYPES = {Format.NDJSON: b"application/x-ndjson", Format.SSE: b"text/event-stream"}
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        content_type,
        len(body),
        body,
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class Closures:
    """Close times seen for tagged streams, until the harness collects them."""

    seen: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Stream:
    fmt: Format
    tokens: int
    interval: float
    usage: bool
    tag: str | None
    started: float  # loop time of token 0
    started_ns: int
    cut_after: int = 0  # drop the connection when this token is due; 0: never
    reset: bool = False  # drop it with RST rather than FIN
    seq: int = 0
    timer: asyncio.TimerHandle | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, closures: Closures, answers: dict[bytes, bytes]) -> None:
        self._closures = closures
        self._answers = answers
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._size = 0
        self._blob = False
        self._stream: _Stream | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._close()

    def eof_received(self) -> bool:
        self._closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_headers_complete(self) -> None:
        self._blob = self._url.startswith(b"/api/blobs/")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if not self._blob and self._size <= MAX_JSON_BODY:
            self._body.append(body)

    def on_message_complete(self) -> None:
        method, path = self._parser.get_method(), self._url.split(b"?", 1)[0]
        if method == b"POST" and path in (b"/api/chat", b"/v1/chat/completions"):
            self._chat(path == b"/api/chat")
        elif method == b"POST" and self._blob:
            self._write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        elif method == b"GET" and path in self._answers:
            self._write(_response(b"200 OK", b"application/json; charset=utf-8", self._answers[path]))
        elif method == b"GET" and path == b"/_bench/closed":
            seen, self._closures.seen = self._closures.seen, {}
            self._write(_response(b"200 OK", b"application/json", json.dumps(seen).encode()))
        else:
            self._write(_response(b"404 Not Found", b"text/plain", b"404 page not found"))

    def _chat(self, native: bool) -> None:
        try:
            request: dict[str, Any] = json.loads(b"".join(self._body))
        except ValueError:
            self._write(_response(b"400 Bad Request", b"application/json", b'{"error":"invalid JSON"}'))
            return
        # Native chat streams unless told not to; /v1 only when asked (wire facts §5.1).
        if not request.get("stream", native):
            reply = _CHAT_REPLY if native else _OPENAI_REPLY
            ctype = b"application/json; charset=utf-8" if native else b"application/json"
            self._write(_response(b"200 OK", ctype, reply))
            return
        bench = request.get("bench") or {}
        if native:
            tokens = int((request.get("options") or {}).get("num_predict", 40))
        else:
            tokens = int(request.get("max_tokens", 40))
        fmt = Format.NDJSON if native else Format.SSE
        self._stream = _Stream(
            fmt=fmt,
            tokens=max(tokens, 1),
            interval=float(bench.get("interval_ms", 100)) / 1000,
            usage=bool((request.get("stream_options") or {}).get("include_usage")),
            tag=bench.get("tag"),
            started=self._loop.time(),
            started_ns=time.monotonic_ns(),
            cut_after=max(int(bench.get("cut_after", 0)), 0),
            reset=bench.get("cut") == "rst",
        )
        self._tick(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % _STREAM_TYPES[fmt])

    def _tick(self, head: bytes = b"") -> None:
        stream = self._stream
        if stream is None or self._transport is None:
            return
        if stream.cut_after and stream.seq >= stream.cut_after:
            self._cut(stream.reset)
            return
        now = time.monotonic_ns()
        out = head + _chunk(token(stream.fmt, stream.seq, now))
        stream.seq += 1
        if stream.seq < stream.tokens:
            stream.timer = self._loop.call_at(stream.started + stream.seq * stream.interval, self._tick)
        else:
            out += b"".join(
                _chunk(record) for record in ending(stream.fmt, stream.tokens, now - stream.started_ns, stream.usage)
            )
            out += b"0\r\n\r\n"
            self._stream = None
        self._transport.write(out)

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _closed(self) -> None:
        """The peer went away: note when, for a tagged stream still running, and stop it."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        if stream.tag is not None:
            self._closures.seen[stream.tag] = time.monotonic_ns()
        if stream.timer is not None:
            stream.timer.cancel()

    def _cut(self, reset: bool) -> None:
        """Drop the connection mid-stream. The tokens before went out one interval ago, so they
        are in the peer's receive queue by now, which a reset does not discard."""
        self._stream = None  # not a hang-up: nothing to note
        if self._transport is None:
            return
        if reset:
            self._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self._transport.close()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def serve(host: str, port: int, lifetime: float, models: int = 1) -> None:
    loop = asyncio.get_running_loop()
    closures = Closures()
    answers = listings(models)
    server = await loop.create_server(lambda: _Connection(closures, answers), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()
    print(f"{READY} {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        # The lifetime cap stops a forgotten upstream even if nobody signals it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), lifetime)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description="The benchmark's fast fake Ollama.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many seconds at most")
    parser.add_argument("--models", type=int, default=1, help="models /api/tags lists (bench:latest and others)")
    args = parser.parse_args(argv)
    # The same malloc thresholds as the gateway: without them this process can fault in fresh
    # pages for most of the body it reads, and a slow upstream flatters the gateway's ratio.
    keep_large_blocks()
    uvloop.run(serve(args.host, args.port, args.lifetime, args.models))


if __name__ == "__main__":
    main()
