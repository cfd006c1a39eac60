"""The upstream client on httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx

from gateway.proxy.headers import Headers
from gateway.proxy.upstream import Outbound, address, connect_timed_out, lost, timed_out, unreachable


@contextmanager
def _translated(started: bool, where: str = "") -> Iterator[None]:
    """Map httpx's exceptions, once, onto the gateway's own."""
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise connect_timed_out(where) from exc
    except httpx.TimeoutException as exc:
        raise timed_out() from exc
    except httpx.TransportError as exc:
        if started:
            raise lost() from exc
        if isinstance(exc, httpx.ConnectError):
            raise unreachable(where, _os_error(exc) or OSError("cannot connect")) from exc
        raise unreachable(where) from exc


def _os_error(exc: BaseException) -> OSError | None:
    """The socket error under httpx's and httpcore's wrappers, for the 502's reason."""
    seen: BaseException | None = exc
    for _ in range(8):
        seen = seen.__cause__ or seen.__context__ if seen is not None else None
        if isinstance(seen, OSError):
            return seen
    return None


class HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Headers = [(name.lower(), value) for name, value in response.headers.raw]

    async def body(self) -> AsyncIterator[bytes]:
        with _translated(started=True):
            async for chunk in self._response.aiter_raw():
                yield chunk

    async def aclose(self) -> None:
        # Closing a half-read response closes its connection: that is how Ollama learns to stop.
        await self._response.aclose()


class HttpxUpstream:
    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float | None,
        write_timeout: float | None,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base = httpx.URL(base_url)
        self._address = address(base_url)
        self._prefix = self._base.raw_path.rstrip(b"/")
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=write_timeout, pool=connect_timeout
            ),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
            # Never route through HTTP(S)_PROXY variables: the upstream address is fixed.
            trust_env=False,
        )
        # Send only what the client sent (plus Host and framing), not httpx's defaults.
        self._client.headers.clear()

    async def send(self, request: Outbound) -> HttpxResponse:
        url = self._base.copy_with(raw_path=self._prefix + request.target.encode("ascii"))
        headers = request.headers
        if isinstance(request.body, bytes):
            # A buffered (possibly rewritten) body is framed by its own length.
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        built = self._client.build_request(request.method, url, headers=headers, content=request.body)
        with _translated(started=False, where=self._address):
            response = await self._client.send(built, stream=True)
        return HttpxResponse(response)

    async def aclose(self) -> None:
        await self._client.aclose()
