"""The watcher keeps each server's state current, whatever a server answers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest

from gateway.fleet import Fleet, MemberSpec, State
from gateway.proxy.upstream import Outbound
from tests.mock_upstream import MockResponse, MockUpstream

pytestmark = pytest.mark.timeout(10)

_TAGS = json.dumps({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]}).encode()


class Scripted(MockUpstream):
    """An upstream whose answers a test decides, and which can fail in unexpected ways."""

    def __init__(self) -> None:
        super().__init__(self._answer)
        self.failure: BaseException | None = None
        self.tags = _TAGS
        self.asked = asyncio.Event()

    def _answer(self, request: Outbound) -> MockResponse:
        self.asked.set()
        if self.failure is not None:
            raise self.failure
        bodies = {"/api/version": b'{"version":"0.33.0"}', "/api/tags": self.tags, "/api/ps": b'{"models":[]}'}
        return MockResponse(200, [(b"content-type", b"application/json; charset=utf-8")], [bodies[request.target]])


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - the watcher announces nothing: poll, bounded
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("failure", "logged"),
    [
        (RuntimeError("a bug somewhere"), "upstream a: checking it failed"),
        (None, "upstream a is down: not a model listing"),
    ],
    ids=["an exception no one expected", "a listing nested too deep to parse"],
)
async def test_a_watcher_survives_what_it_did_not_expect(
    failure: BaseException | None, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    scripted = Scripted()
    fleet = Fleet(
        [(MemberSpec("a", "http://a:1"), scripted, scripted), (MemberSpec("b", "http://b:1"), Scripted(), Scripted())],
        concurrency=0,
        queue_timeout=1,
        refresh_interval=0.05,
        probe_timeout=1,
    )
    member = fleet.named("a")
    assert member is not None
    await fleet.start()
    try:
        await _until(lambda: member.state is State.UP)
        if failure is None:
            scripted.tags = b'{"models":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        else:
            scripted.failure = failure
        await _until(lambda: member.state is State.DOWN)
        # Still watching: once it answers sanely again, it is back.
        scripted.failure, scripted.tags = None, _TAGS
        await _until(lambda: member.state is State.UP)
    finally:
        await fleet.close()
    assert logged in caplog.messages
    assert "upstream a is up again: Ollama 0.33.0" in caplog.messages
