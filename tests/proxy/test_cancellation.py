"""When the client goes away, the upstream connection is closed at once, so Ollama stops."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.servers import RunningGateway, raw_post, read_until

pytestmark = pytest.mark.timeout(20)


def _open(gateway: RunningGateway, path: str, body: dict[str, object]) -> socket.socket:
    return raw_post(gateway.url, path, json.dumps(body).encode(), gateway.auth)


def _assert_upstream_closed_promptly(fake: FakeOllama) -> None:
    recorded = fake.wait_for_request()
    closed_at = time.monotonic()
    assert recorded.client_disconnected.wait(1.0), "the upstream connection stayed open"
    assert recorded.disconnected_at is not None
    assert recorded.disconnected_at - closed_at < 1.0
    assert not recorded.completed.is_set()


def test_disconnect_mid_stream(gateway: RunningGateway, fake: FakeOllama) -> None:
    gate = StepGate()
    fake.behaviour = Behaviour(tokens=50, gate=gate)
    sock = _open(gateway, "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
    gate.release(2)
    read_until(sock, b'"done":false', 2)
    sock.close()
    _assert_upstream_closed_promptly(fake)
    assert fake.requests[0].chunks_sent <= 3


def test_disconnect_before_first_byte(gateway: RunningGateway, fake: FakeOllama) -> None:
    # Ollama is loading the model: no status line yet.
    fake.behaviour = Behaviour(hang=True)
    sock = _open(gateway, "/api/generate", {"model": "llama3.2", "prompt": "hi"})
    fake.wait_for_request()
    sock.close()
    _assert_upstream_closed_promptly(fake)


def test_disconnect_during_non_streamed_request(gateway: RunningGateway, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(hang=True)
    sock = _open(gateway, "/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]})
    fake.wait_for_request()
    sock.close()
    _assert_upstream_closed_promptly(fake)


def test_sse_disconnect_mid_stream(gateway: RunningGateway, fake: FakeOllama) -> None:
    gate = StepGate()
    fake.behaviour = Behaviour(tokens=50, gate=gate)
    body = {"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    sock = _open(gateway, "/v1/chat/completions", body)
    gate.release(2)
    read_until(sock, b"data: ", 2)
    sock.close()
    _assert_upstream_closed_promptly(fake)


def test_a_held_request_is_watched_without_a_task_of_its_own(gateway: RunningGateway, fake: FakeOllama) -> None:
    """The server tells the request that its client left (a callback), where a task per request
    waited on receive() for it; leaving still stops Ollama at once."""
    fake.behaviour = Behaviour(hang=True)
    sock = _open(gateway, "/api/chat", {"model": "llama3.2", "stream": False, "messages": []})
    fake.wait_for_request()
    loop = gateway.server.servers[0].get_loop()

    async def coroutines() -> list[str]:
        return [task.get_coro().__qualname__ for task in asyncio.all_tasks()]  # type: ignore[union-attr]

    try:
        running = asyncio.run_coroutine_threadsafe(coroutines(), loop).result(5)
    finally:
        sock.close()
    assert "RequestResponseCycle.run_asgi" in running
    assert not [name for name in running if name.startswith("Inbound.")], running
    _assert_upstream_closed_promptly(fake)
