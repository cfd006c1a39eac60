"""One mock upstream for unit tests, in the spirit of httpx's ``MockTransport``: an ``Upstream``
whose answers come from a handler, recording every request sent to it. No sockets: tests of what
happens on the wire run against the faithful fake Ollama (``tests/fake_ollama``) instead."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from gateway.proxy.headers import Headers
from gateway.proxy.upstream import Outbound

NDJSON: Headers = [(b"content-type", b"application/x-ndjson")]


@dataclass
class MockResponse:
    status: int = 200
    headers: Headers = field(default_factory=lambda: list(NDJSON))
    chunks: Sequence[bytes] = ()
    closed: bool = False

    async def body(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


# Answers a request, or raises the gateway error the upstream client would (unreachable, ...).
Handler = Callable[[Outbound], MockResponse | Awaitable[MockResponse]]


class MockUpstream:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.sent: list[Outbound] = []
        self.closed = False

    @classmethod
    def answering(cls, *chunks: bytes, status: int = 200, headers: Headers | None = None) -> MockUpstream:
        """An upstream that answers every request with the same body, in these chunks."""
        return cls(lambda _: MockResponse(status, list(headers or NDJSON), chunks))

    @classmethod
    def raising(cls, error: Exception) -> MockUpstream:
        """An upstream every request to which fails with ``error``."""

        def fail(_: Outbound) -> MockResponse:
            raise error

        return cls(fail)

    async def send(self, request: Outbound) -> MockResponse:
        self.sent.append(request)
        answer = self._handler(request)
        return await answer if inspect.isawaitable(answer) else answer

    async def aclose(self) -> None:
        self.closed = True
