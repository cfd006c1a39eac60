"""The upstream client on aiohttp: its C HTTP parser makes relaying a chunk several times cheaper
than httpx's pure-Python one, which is what the relay does all day (see README, Performance)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from gateway.errors import UpstreamBroken, UpstreamTimeout, UpstreamUnavailable
from gateway.headers import Headers
from gateway.upstream import Outbound


def _own_error(error: BaseException) -> BaseException | None:
    """aiohttp wraps what the request-body iterator raised (413, client gone): find it."""
    cause = error.__cause__
    while cause is not None:
        if not isinstance(cause, aiohttp.ClientError | HttpProcessingError | OSError | asyncio.TimeoutError):
            return cause
        cause = cause.__cause__
    return None


@contextmanager
def _translated(started: bool) -> Iterator[None]:
    """Map aiohttp's exceptions, once, onto the gateway's own."""
    try:
        yield
    except (TimeoutError, aiohttp.ClientError) as error:
        own = _own_error(error)
        if own is not None:
            raise own from None
        if isinstance(error, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            raise UpstreamTimeout("upstream timed out") from error
        if started:
            raise UpstreamBroken("upstream connection lost") from error
        raise UpstreamUnavailable("upstream unavailable") from error


class AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Headers = list(response.raw_headers)

    async def body(self) -> AsyncIterator[bytes]:
        content = self._response.content
        with _translated(started=True):
            while data := await content.readany():
                yield data
        if not self._response.content.is_eof():
            raise UpstreamBroken("upstream connection lost")

    async def aclose(self) -> None:
        # close() (not release()) drops a half-read connection: that is how Ollama learns to stop.
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpUpstream:
    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float | None,
        max_connections: int,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created lazily, on the running loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=60),
                timeout=self._timeout,
                # Relay the bytes exactly as Ollama sent them; keep no cookies; ignore proxy variables.
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def send(self, request: Outbound) -> AiohttpResponse:
        url = URL(self._base + request.target, encoded=True)
        headers = request.headers
        if isinstance(request.body, bytes):
            # A buffered (possibly rewritten) body is framed by its own length.
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        with _translated(started=False):
            response = await self._open().request(
                request.method,
                url,
                headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers],
                data=request.body if request.body != b"" else None,
                allow_redirects=False,
                compress=None,
            )
        return AiohttpResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
