"""The server protocol hands request bodies to the application whole, in order, and uncopied, and
still stops reading a client that sends faster than the application takes."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from gateway.app import create_app
from gateway.runtime.http_protocol import CHECKED_UVICORN_SOURCES, GatewayHttpProtocol
from gateway.runtime.server import uvicorn_config
from tests.conftest import gateway_settings

WAIT = 5.0


class _Transport(asyncio.Transport):
    """Just enough of a socket transport for a protocol driven by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class _Spy(GatewayHttpProtocol):
    """Records the body objects the parser delivers."""

    delivered: list[bytes]

    def on_body(self, body: bytes) -> None:
        self.delivered.append(body)
        super().on_body(body)


class _App:
    """Takes one ``receive()`` each time the test allows it, and hands over what it was given."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.turns: asyncio.Queue[None] = asyncio.Queue()
        self.took: asyncio.Queue[Message] = asyncio.Queue()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.started.set()
        more = True
        while more:
            await self.turns.get()
            message = await receive()
            await self.took.put(message)
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def take(self) -> Message:
        await self.turns.put(None)
        return await asyncio.wait_for(self.took.get(), WAIT)


def _protocol(app: _App) -> tuple[_Spy, _Transport]:
    config = uvicorn.Config(app, http=_Spy, lifespan="off", log_level="warning")
    protocol = _Spy(config=config, server_state=ServerState(), app_state={})
    protocol.delivered = []
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_a_piece_reaches_the_application_as_the_same_object() -> None:
    app = _App()
    protocol, _ = _protocol(app)
    size = 3 * HIGH_WATER_LIMIT
    protocol.data_received(b"POST /api/blobs/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    await asyncio.wait_for(app.started.wait(), WAIT)
    piece = bytes(range(256)) * (HIGH_WATER_LIMIT // 256)
    for _ in range(3):
        protocol.data_received(piece)
        message = await app.take()
        # Not a copy: the parser's object itself.
        assert message["body"] is protocol.delivered[-1]
        assert message["body"] == piece
    assert message["more_body"] is False


async def test_pieces_that_queue_up_arrive_joined_in_order_and_reading_pauses() -> None:
    app = _App()
    protocol, transport = _protocol(app)
    pieces = [bytes([n]) * (HIGH_WATER_LIMIT // 2) for n in range(1, 6)]
    total = sum(map(len, pieces))
    protocol.data_received(b"POST /api/blobs/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)
    await asyncio.wait_for(app.started.wait(), WAIT)
    protocol.data_received(pieces[0])
    assert transport.is_reading()
    protocol.data_received(pieces[1])
    protocol.data_received(pieces[2])  # past the high-water mark while nobody takes
    assert not transport.is_reading()
    first = await app.take()
    assert first["body"] == b"".join(pieces[:3])
    assert transport.is_reading()  # taking resumes reading
    protocol.data_received(pieces[3] + pieces[4])
    second = await app.take()
    assert second["body"] == b"".join(pieces[3:])
    assert second["more_body"] is False
    assert bytes(transport.written).startswith(b"HTTP/1.1 204")


async def test_a_read_full_of_tiny_chunks_is_joined_in_place() -> None:
    # A chunked body of 1-byte chunks: one parser callback per chunk, all within one read. Joining
    # them into a new bytes object each time would copy the whole body per chunk.
    app = _App()
    protocol, _ = _protocol(app)
    protocol.data_received(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    await asyncio.wait_for(app.started.wait(), WAIT)
    body = bytes(range(256)) * 8
    protocol.data_received(b"".join(b"1\r\n%c\r\n" % byte for byte in body))
    assert len(protocol.delivered) == len(body)
    assert type(protocol.cycle.body) is bytearray  # grown in place, not rebuilt per chunk
    message = await app.take()
    assert type(message["body"]) is bytes
    assert message["body"] == body
    protocol.data_received(b"0\r\n\r\n")
    assert (await app.take())["more_body"] is False


def test_the_served_gateway_uses_it(database_url: str) -> None:
    settings = gateway_settings(database_url=database_url)
    config = uvicorn_config(settings, create_app(settings))
    config.load()
    assert config.http_protocol_class is GatewayHttpProtocol


def test_the_uvicorn_code_the_protocol_replaces_is_the_code_it_was_checked_against() -> None:
    """A new uvicorn may change on_body, data_received, receive() or send(): this fails until someone
    has read them."""
    found: dict[str, Callable[..., object]] = {
        "HttpToolsProtocol.on_body": HttpToolsProtocol.on_body,
        "HttpToolsProtocol.data_received": HttpToolsProtocol.data_received,
        "RequestResponseCycle.receive": RequestResponseCycle.receive,
        "RequestResponseCycle.send": RequestResponseCycle.send,
    }
    digests = {name: hashlib.sha256(inspect.getsource(code).encode()).hexdigest() for name, code in found.items()}
    assert digests == CHECKED_UVICORN_SOURCES, f"uvicorn {uvicorn.__version__} differs from the checked code"
