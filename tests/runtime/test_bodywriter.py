"""The server's body writer: a stream's pieces written straight to the client's connection, but
never past an ASGI middleware that wraps the gateway (it must see every piece, as ``send`` has it)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.runtime.bodywriter import CycleWriter
from tests.conftest import forget_startup_check, gateway_settings, issue_key
from tests.fake_ollama import Behaviour, FakeOllama
from tests.servers import RunningGateway, gateway_thread

pytestmark = pytest.mark.timeout(20)


class Shouting:
    """Upper-cases every body piece that passes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def shout(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": message.get("body", b"").upper()}
            await send(message)

        await self.app(scope, receive, shout)


@pytest.fixture
def wrapped(fake: FakeOllama, database_url: str) -> Iterator[RunningGateway]:
    key = issue_key(database_url, "shouted")
    with gateway_thread(gateway_settings(upstream_url=fake.url, database_url=database_url), wrap=Shouting) as running:
        running.key = key
        forget_startup_check(fake)
        yield running


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_every_piece_of_a_stream_passes_a_middleware_around_the_gateway(
    wrapped: RunningGateway, fake: FakeOllama, path: str
) -> None:
    fake.behaviour = Behaviour(tokens=20)
    body = {"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=wrapped.url, headers=wrapped.auth, timeout=10) as client:
        response = client.post(path, json=body)
    assert response.status_code == 200
    assert response.content.count(b"TOK") == 20
    assert response.content == response.content.upper()


class _Transport:
    """What a cycle writes, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _cycle(method: str, *, keep_alive: bool = True) -> tuple[RequestResponseCycle, _Transport, list[int]]:
    transport = _Transport()
    completed: list[int] = []
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": method},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test"),
        access_log=False,
        default_headers=[(b"date", b"Mon, 07 Dec 2026 06:00:00 GMT")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: completed.append(1),
    )
    return cycle, transport, completed


def _state(cycle: RequestResponseCycle) -> tuple[object, ...]:
    return (
        cycle.response_started,
        cycle.response_complete,
        cycle.chunked_encoding,
        cycle.expected_content_length,
        cycle.keep_alive,
        cycle.message_event.is_set(),
    )


ANSWERS = [
    ("POST", 200, [(b"content-type", b"application/json"), (b"content-length", b"11")], b'{"ok":true}', True),
    ("POST", 200, [(b"content-type", b"application/json")], b'{"ok":true}', True),  # no length: chunked
    ("POST", 200, [(b"content-type", b"application/json")], b"", True),
    ("HEAD", 200, [(b"content-type", b"application/json"), (b"content-length", b"11")], b"", True),
    ("HEAD", 200, [(b"content-type", b"application/json")], b"", True),
    ("GET", 204, [(b"X-Request-Id", b"abc")], b"", True),
    ("GET", 304, [], b"", True),
    ("GET", 200, [(b"content-length", b"2"), (b"Connection", b"keep-alive, Close")], b"hi", True),
    ("GET", 200, [(b"content-length", b"2")], b"hi", False),  # the server will not keep it alive
    ("GET", 404, [(b"transfer-encoding", b"Chunked")], b"nope", True),
]


@pytest.mark.parametrize(("method", "status", "headers", "body", "keep_alive"), ANSWERS)
def test_a_whole_answer_is_written_as_send_writes_it_in_one_write(
    method: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool
) -> None:
    async def both() -> None:
        sent, sent_to, sent_done = _cycle(method, keep_alive=keep_alive)
        await sent.send({"type": "http.response.start", "status": status, "headers": headers})
        await sent.send({"type": "http.response.body", "body": body, "more_body": True})
        await sent.send({"type": "http.response.body", "body": b"", "more_body": False})
        started, started_to, started_done = _cycle(method, keep_alive=keep_alive)
        writer = CycleWriter(started)
        assert writer.starts()
        writer.start(status, headers, body)
        assert b"".join(started_to.writes) == b"".join(sent_to.writes)
        assert len(started_to.writes) == 1 < len([piece for piece in sent_to.writes if piece]) + (not body)
        assert _state(started) == _state(sent)
        assert (started_to.closed, started_done) == (sent_to.closed, sent_done)
        assert started_done == [1]
        assert not writer.starts()  # begun: anything more goes through send, which refuses it

    asyncio.run(both())


@pytest.mark.parametrize(
    ("headers", "problem"),
    [([(b"bad name", b"x")], "Invalid HTTP header name."), ([(b"x-ok", b"line\nbreak")], "Invalid HTTP header value.")],
)
def test_a_whole_answer_refuses_the_headers_send_refuses(headers: list[tuple[bytes, bytes]], problem: str) -> None:
    async def check() -> None:
        cycle, transport, _ = _cycle("GET")
        with pytest.raises(RuntimeError, match=problem):
            await cycle.send({"type": "http.response.start", "status": 200, "headers": headers})
        cycle, transport, _ = _cycle("GET")
        with pytest.raises(RuntimeError, match=problem):
            CycleWriter(cycle).start(200, headers, b"")
        assert transport.writes == []

    asyncio.run(check())


def test_whole_answers_keep_their_framing_on_a_kept_alive_connection(gateway: RunningGateway) -> None:
    """On a real socket: non-streamed answers written whole (head and body at once) carry their
    exact length, and the connection carries the next request; a HEAD gets the head alone."""
    body = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}'
    auth = b"authorization: " + gateway.auth["Authorization"].encode() + b"\r\n"
    chat = (
        b"POST /api/chat HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        + auth
        + b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    head = b"HEAD /api/tags HTTP/1.1\r\nhost: gateway\r\n" + auth + b"\r\n"
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        reader = sock.makefile("rb")
        for request, has_body in ((chat, True), (head, False), (chat, True)):
            sock.sendall(request)
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
            fields = {}
            while (line := reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                fields[name.lower()] = value.strip()
            assert "transfer-encoding" not in fields
            if has_body:
                assert json.loads(reader.read(int(fields["content-length"])))["done"] is True
