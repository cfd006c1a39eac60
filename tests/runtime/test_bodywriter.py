"""The server's body writer: a stream's pieces written straight to the client's connection, but
never past an ASGI middleware that wraps the gateway (it must see every piece, as ``send`` has it)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
