"""The seam between the proxy core and the HTTP client that talks to Ollama.

An implementation sends one request and hands back the status, headers and an iterator of raw
body bytes; it translates its own exceptions into ``UpstreamUnavailable`` / ``UpstreamTimeout`` /
``UpstreamBroken`` so nothing above it ever sees a client library's exception types.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from gateway.headers import Headers


@dataclass(slots=True)
class Outbound:
    method: str
    target: str  # path and query, already checked; appended to the upstream base URL
    headers: Headers
    body: bytes | AsyncIterable[bytes]


class UpstreamResponse(Protocol):
    status: int
    headers: Headers

    def body(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    async def send(self, request: Outbound) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


def open_upstream(
    client: str,
    base_url: str,
    *,
    connect_timeout: float,
    read_timeout: float | None,
    write_timeout: float | None,
    max_connections: int,
) -> Upstream:
    """The upstream client named by settings (the other one is never imported)."""
    if client == "httpx":
        from gateway.upstream.httpx_impl import HttpxUpstream

        return HttpxUpstream(
            base_url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            max_connections=max_connections,
        )
    from gateway.upstream.httptools_impl import HttptoolsUpstream

    return HttptoolsUpstream(
        base_url,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        write_timeout=write_timeout,
        max_connections=max_connections,
    )
