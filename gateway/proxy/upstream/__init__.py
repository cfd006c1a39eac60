"""The seam between the relay and the HTTP client that talks to Ollama.

An implementation sends one request and hands back the status, headers and an iterator of raw
body bytes; it translates its own exceptions into ``UpstreamUnavailable`` / ``UpstreamTimeout`` /
``UpstreamBroken`` so nothing above it ever sees a client library's exception types. Every such
failure is worded here, once (``unreachable``, ``timed_out``, ...): a client's error reads the
same whichever upstream client is configured.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from gateway.errors import (
    UpstreamBroken,
    UpstreamBusy,
    UpstreamConnectTimeout,
    UpstreamNotReached,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.proxy.headers import Headers


@dataclass(slots=True)
class Outbound:
    method: str
    target: str  # path and query, already checked; appended to the upstream base URL
    headers: Headers
    body: bytes | AsyncIterable[bytes]


def address(base_url: str) -> str:
    """``host:port`` of an upstream URL: what errors and logs may name (never its user or password)."""
    parts = urlsplit(base_url)
    return authority(parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80))


def authority(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unreachable(where: str, error: OSError | None = None) -> UpstreamUnavailable:
    """The 502 for an upstream that could not be connected to (``error``: the request never left),
    or that hung up before answering (no ``error``: it may have read the request).

    It names the address so that an operator reading a client's error knows which server and why.
    """
    if error is None:
        return UpstreamUnavailable(f"upstream {where} closed the connection before answering")
    if isinstance(error, socket.gaierror):
        # The OS's words ("Name or service not known") name no host: say which name did not resolve.
        host = where.rpartition(":")[0].strip("[]")
        reason = f"the host name {host} does not resolve ({error.strerror or error})"
    elif isinstance(error, ssl.SSLError):
        # Its errno is OpenSSL's, not the OS's: "CERTIFICATE_VERIFY_FAILED", not "Operation not permitted".
        reason = error.reason or str(error) or "TLS handshake failed"
    elif error.errno is not None and error.errno > 0:
        # asyncio's own text is "Connect call failed (...)"; the OS's says why.
        reason = os.strerror(error.errno)
    else:
        reason = error.strerror or str(error) or "cannot connect"
    return UpstreamNotReached(f"upstream {where} unavailable: {reason}")


def connect_timed_out(where: str) -> UpstreamConnectTimeout:
    return UpstreamConnectTimeout(f"upstream {where} did not accept a connection in time")


def busy(where: str) -> UpstreamBusy:
    """Every connection the gateway may open to ``where`` is in use, and none came free in time."""
    return UpstreamBusy(f"upstream {where}: the gateway's connection limit is reached")


def timed_out() -> UpstreamTimeout:
    """Ollama sent nothing (or read nothing) for longer than the read (or write) timeout."""
    return UpstreamTimeout("upstream timed out")


def lost() -> UpstreamBroken:
    """The connection failed after the answer had begun."""
    return UpstreamBroken("upstream connection lost")


def malformed() -> UpstreamBroken:
    return UpstreamBroken("upstream sent a malformed response")


def misframed() -> UpstreamBroken:
    """The client's streamed body ran past (or stopped short of) its Content-Length."""
    return UpstreamBroken("request body does not match its content-length")


class UpstreamResponse(Protocol):
    status: int
    headers: Headers  # names lower-cased, whatever case the upstream wrote them in

    def body(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Pushing:
    """A response that can hand its body pieces on as they arrive, from the connection's own
    callback, instead of through ``body()``: no task switch per piece (at tens of streams, each
    piece arrives alone, and the switch was most of its cost)."""

    def push(self, sink: Callable[[bytes], bool] | None) -> None:
        """From now on, each piece that arrives while ``body()``'s reader waits for one and nothing
        is queued goes to ``sink``; a piece it refuses (False: it cannot take it now) is queued for
        ``body()``, and so is every piece after it until the queue is read. None: stop."""
        raise NotImplementedError

    def whole(self) -> bytes | None:
        """The whole body, taken, when it has all arrived, is small and nothing of it was read;
        None otherwise (then it is read through ``body()``)."""
        raise NotImplementedError


class Upstream(Protocol):
    async def send(self, request: Outbound) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


async def fetch(upstream: Upstream, target: str, *, limit: int = 65536) -> tuple[int, bytes]:
    """``GET target``: the status and (the first ``limit`` bytes of) the body. Raises GatewayError."""
    response = await upstream.send(Outbound("GET", target, [], b""))
    return response.status, await read_whole(response, limit)


async def read_whole(response: UpstreamResponse, limit: int) -> bytes:
    """The first ``limit`` bytes of a (small) answer's body, the rest drained; then closed."""
    body = bytearray()
    try:
        async for data in response.body():
            body += data[: limit - len(body)]
    finally:
        await response.aclose()
    return bytes(body)


async def fetch_version(upstream: Upstream) -> tuple[int, bytes]:
    """``GET /api/version``: the status and (the first 64 KiB of) the body. Raises GatewayError."""
    return await fetch(upstream, "/api/version")


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
        from gateway.proxy.upstream.httpx_impl import HttpxUpstream

        return HttpxUpstream(
            base_url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            max_connections=max_connections,
        )
    from gateway.proxy.upstream.httptools_impl import HttptoolsUpstream

    return HttptoolsUpstream(
        base_url,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        write_timeout=write_timeout,
        max_connections=max_connections,
    )
