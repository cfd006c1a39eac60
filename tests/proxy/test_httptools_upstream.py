"""The httptools upstream client against scripted raw HTTP servers: the framing, pooling and flow
control cases a well-behaved fake never produces (Ollama's own answers are covered everywhere else).

Each test runs on uvloop, as the gateway does, with its server on 127.0.0.1 in the same loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import select
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from gateway.errors import UpstreamBroken, UpstreamUnavailable
from gateway.proxy.upstream import Outbound, httptools_impl
from gateway.proxy.upstream.httptools_impl import _HIGH_WATER, HttptoolsUpstream

pytestmark = pytest.mark.timeout(20)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@dataclass
class Server:
    port: int = 0
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)  # (head, body) in arrival order


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop.run(asyncio.wait_for(scenario(), 15))


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    state = Server()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            await handler(reader, writer, state)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


async def read_request(reader: asyncio.StreamReader, state: Server) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), None)
    if length is not None:
        body = await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in lines:
        pieces = []
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            pieces.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readexactly(2)
        body = b"".join(pieces)
    else:
        body = b""
    state.requests.append((head, body))
    return head, body


def upstream(state: Server, path: str = "", *, connections: int = 10, read_timeout: float = 5.0) -> HttptoolsUpstream:
    return HttptoolsUpstream(
        f"http://127.0.0.1:{state.port}{path}",
        connect_timeout=2.0,
        read_timeout=read_timeout,
        write_timeout=2.0,
        max_connections=connections,
    )


def outbound(method: str = "POST", body: bytes | AsyncIterator[bytes] = b'{"model":"m"}') -> Outbound:
    headers = [(b"content-type", b"application/json"), (b"x-request-id", b"r1")]
    return Outbound(method=method, target="/api/chat?x=1", headers=headers, body=body)


async def fetch(client: HttptoolsUpstream, request: Outbound) -> tuple[int, bytes]:
    response = await client.send(request)
    try:
        return response.status, b"".join([chunk async for chunk in response.body()])
    finally:
        await response.aclose()


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
    while True:
        await read_request(reader, state)
        writer.write(OK)


def test_one_connection_carries_every_request_with_its_own_framing() -> None:
    async def scenario() -> None:
        async with serving(answer_each) as state:
            client = upstream(state, "/ollama")
            for _ in range(5):
                assert await fetch(client, outbound()) == (200, b"{}")
            assert await fetch(client, outbound("GET", b"")) == (200, b"{}")
            await client.aclose()
        assert state.connections == 1
        head, body = state.requests[0]
        assert head.startswith(b"POST /ollama/api/chat?x=1 HTTP/1.1\r\n")
        assert f"host: 127.0.0.1:{state.port}\r\n".encode() in head
        assert b"content-length: 13\r\n" in head
        assert body == b'{"model":"m"}'
        get_head = state.requests[-1][0]
        assert get_head.startswith(b"GET ")
        assert b"content-length" not in get_head

    run(scenario)


def test_head_answers_and_bytes_after_an_answer_are_never_relayed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        head, _ = await read_request(reader, state)
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        else:
            # A second, unasked-for answer in the same packet as the real one.
            writer.write(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!")
        await reader.read()

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state)
            assert await fetch(client, outbound("HEAD", b"")) == (200, b"")
            assert await fetch(client, outbound()) == (200, b"{}")
            assert await fetch(client, outbound()) == (200, b"{}")
            await client.aclose()
        # Neither a HEAD answer nor a connection that carried stray bytes is used again.
        assert state.connections == 3

    run(scenario)


def test_interim_answers_close_delimited_bodies_and_broken_answers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await read_request(reader, state)
        script = [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Kind: close\r\nConnection: close\r\n\r\nhello world",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..",
            b"NOT HTTP AT ALL\r\n\r\n",
        ]
        writer.write(script[state.connections - 1])

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state)
            response = await client.send(outbound())
            assert (response.status, response.headers[0]) == (200, (b"x-kind", b"close"))
            assert b"".join([chunk async for chunk in response.body()]) == b"hello world"
            await response.aclose()
            cut = await client.send(outbound())
            body = cut.body()
            assert await anext(body) == b"only ten.."
            with pytest.raises(UpstreamBroken, match="upstream connection lost"):
                await anext(body)
            await cut.aclose()
            with pytest.raises(UpstreamUnavailable, match="malformed"):
                await client.send(outbound())
            await client.aclose()

    run(scenario)


def test_a_kept_alive_connection_that_ends_unanswered_repeats_only_safe_requests() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await read_request(reader, state)
        writer.write(OK)
        if state.connections % 2 == 1:
            # Reads the next request, then goes away answering nothing: it may have run it.
            await read_request(reader, state)
            return
        await answer_each(reader, writer, state)

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state)
            assert await fetch(client, outbound()) == (200, b"{}")
            assert await fetch(client, outbound("GET", b"")) == (200, b"{}")
            assert state.connections == 2
            await client.aclose()
            client = upstream(state)
            assert await fetch(client, outbound()) == (200, b"{}")
            # A POST is not sent twice: the upstream may have started a generation already.
            with pytest.raises(UpstreamUnavailable, match="closed the connection before answering"):
                await fetch(client, outbound())
            await client.aclose()
        methods = [head.split(b" ")[0] for head, _ in state.requests]
        # The GET went twice (the second time on a new connection); the failed POST once only.
        assert methods == [b"POST", b"GET", b"GET", b"POST", b"POST"]

    run(scenario)


def test_a_streamed_body_is_never_sent_twice() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await read_request(reader, state)
        writer.write(OK)
        await read_request(reader, state)  # then away, unanswered

    async def streamed() -> AsyncIterator[bytes]:
        yield b'{"model":'
        yield b'"m"}'

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state)
            assert await fetch(client, outbound("GET", b"")) == (200, b"{}")
            # Partly consumed by the first try: it cannot go again, whatever the method.
            with pytest.raises(UpstreamUnavailable):
                await fetch(client, outbound("GET", streamed()))
            await client.aclose()
        assert state.connections == 1
        assert state.requests[1][1] == b'{"model":"m"}'

    run(scenario)


def test_a_connection_the_upstream_closed_while_idle_is_never_written_to() -> None:
    """The race an idle close can cause: the FIN is in, the event loop has not handled it yet."""
    idle_closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await read_request(reader, state)
        writer.write(OK)
        if state.connections == 1:
            await writer.drain()
            writer.close()  # idle: nothing more will be read from this connection
            idle_closed.set()
            return
        await answer_each(reader, writer, state)

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state)
            assert await fetch(client, outbound()) == (200, b"{}")
            await idle_closed.wait()
            (conn,) = client._pool._idle
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            # Block the loop until the FIN has reached the socket, so the client cannot have seen it.
            readable, _, _ = select.select([sock.fileno()], [], [], 5)
            assert readable
            assert conn.usable()  # as far as the event loop knows
            assert await fetch(client, outbound()) == (200, b"{}")
            await client.aclose()
        assert state.connections == 2
        assert [head.split(b" ")[0] for head, _ in state.requests] == [b"POST", b"POST"]

    run(scenario)


def test_a_fresh_connection_that_closes_unanswered_is_not_repeated() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await read_request(reader, state)  # read, then close: the request may have been processed

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state)
            with pytest.raises(UpstreamUnavailable, match="closed the connection before answering"):
                await fetch(client, outbound())
            await client.aclose()
        assert len(state.requests) == 1

    run(scenario)


def test_a_slow_reader_pauses_the_upstream_and_loses_nothing() -> None:
    size = 16 * 1024 * 1024
    data = bytes(range(256)) * (size // 256)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await read_request(reader, state)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + data)
        await writer.drain()
        await reader.read()

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state)
            response = await client.send(outbound())
            for _ in range(400):  # bounded: until the client stops reading (or 4 s)
                if response._paused:
                    break
                await asyncio.sleep(0.01)
            assert response._paused
            assert response._buffered < _HIGH_WATER + 512 * 1024
            digest = hashlib.sha256()
            async for chunk in response.body():
                digest.update(chunk)
            assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
            await response.aclose()
            await client.aclose()

    run(scenario)


def test_the_connection_cap_queues_and_a_cancelled_request_frees_its_slot() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        while True:
            head, _ = await read_request(reader, state)
            if b"x-request-id: hang" in head:
                # The gateway gave up on this one: it must close the connection, not reuse it.
                assert await reader.read() == b""
                release.set()
                return
            writer.write(OK)

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state, connections=1)
            first = asyncio.create_task(fetch(client, outbound()))
            second = asyncio.create_task(fetch(client, outbound()))
            assert list(await asyncio.gather(first, second)) == [(200, b"{}")] * 2
            assert state.connections == 1
            hanging = outbound()
            hanging.headers = [(b"x-request-id", b"hang")]
            waiting = asyncio.create_task(fetch(client, hanging))
            for _ in range(400):  # bounded: until the server has the request (or 2 s)
                if len(state.requests) == 3:
                    break
                await asyncio.sleep(0.005)
            waiting.cancel()
            await release.wait()
            # The only slot is free again: a new connection carries the next request.
            assert await fetch(client, outbound()) == (200, b"{}")
            assert state.connections == 2
            await client.aclose()

    run(scenario)


def test_an_upload_answered_before_it_is_complete_gets_that_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno")
        await writer.drain()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"x" * 1024 * 1024

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state)
            assert await fetch(client, outbound(body=body())) == (400, b"no")
            await client.aclose()

    run(scenario)


def test_an_abandoned_answer_never_hands_its_connection_on() -> None:
    """A paused connection, or one under a half-sent body, must not carry the next request."""
    # Its last byte is the one that fills the buffer past the mark: complete, and reading paused.
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (_HIGH_WATER + 1) + b"b" * (_HIGH_WATER + 1)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            state.requests.append((head, b""))
            if head.startswith(b"POST /api/blobs/"):
                # Answer at once, before the declared body has come, and keep the connection:
                # whatever else arrives on it, the test looks at.
                writer.write(OK)
                state.requests.append((b"rest", await reader.read()))
                return
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(big if b"x-request-id: big" in head else OK)

    answered = asyncio.Event()

    async def failing_body() -> AsyncIterator[bytes]:
        yield b"a" * 10
        await answered.wait()
        raise ConnectionAbortedError("the client left")

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state, read_timeout=2.0)
            response = await client.send(Outbound("POST", "/api/show", [(b"x-request-id", b"big")], b"{}"))
            for _ in range(400):  # bounded: until the whole answer is in and reading paused
                if response.complete:
                    break
                await asyncio.sleep(0.005)
            assert response.complete
            assert response._paused
            await response.aclose()  # the relay gave up without reading it
            assert await fetch(client, outbound()) == (200, b"{}")
            upload = Outbound("POST", "/api/blobs/x", [(b"content-length", b"1000")], failing_body())
            response = await client.send(upload)
            assert response.status == 200
            answered.set()
            for _ in range(400):  # bounded: until the body writer has failed
                if response.writer is None or response.writer.done():
                    break
                await asyncio.sleep(0.005)
            await response.aclose()
            assert await fetch(client, outbound()) == (200, b"{}")
            await client.aclose()
        heads = [head.split(b" ")[1] for head, _ in state.requests if head != b"rest"]
        assert heads == [b"/api/show", b"/api/chat?x=1", b"/api/blobs/x", b"/api/chat?x=1"]
        # The paused connection was dropped, so was the one under the half-sent body: after the
        # upload's 10 bytes, its connection carried nothing more (the last request went elsewhere).
        assert state.connections == 3
        assert [rest for head, rest in state.requests if head == b"rest"] == [b"a" * 10]

    run(scenario)


def test_a_turn_passed_to_a_request_that_left_goes_to_the_next() -> None:
    async def scenario() -> None:
        async with serving(answer_each) as state:
            client = upstream(state, connections=1)
            holder = await client.send(outbound())
            woken = asyncio.create_task(fetch(client, outbound()))
            after = asyncio.create_task(fetch(client, outbound()))
            for _ in range(400):  # bounded: until both wait for the only connection
                if len(client._pool._waiting) == 2:
                    break
                await asyncio.sleep(0.005)
            assert [chunk async for chunk in holder.body()] == [b"{}"]
            await holder.aclose()  # wakes the first waiter...
            woken.cancel()  # ...whose client leaves before it runs
            started = asyncio.get_running_loop().time()
            assert await after == (200, b"{}")
            # Served by the freed connection at once, not after the 2 s slot timeout.
            assert asyncio.get_running_loop().time() - started < 1.0
            await client.aclose()

    run(scenario)


def test_an_early_answer_to_a_large_buffered_body_is_relayed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno")
        await writer.drain()

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state)
            # Far more than the socket and the write buffer hold, never read by the upstream.
            assert await fetch(client, outbound(body=b"x" * 32 * 1024 * 1024)) == (413, b"no")
            await client.aclose()

    run(scenario)


def test_a_request_given_up_before_its_answer_leaves_no_timer_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    exchanges: list[httptools_impl._Response] = []

    class Recorded(httptools_impl._Response):
        def sent(self) -> None:
            exchanges.append(self)
            super().sent()

    monkeypatch.setattr(httptools_impl, "_Response", Recorded)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await read_request(reader, state)
        await reader.read()  # never answers

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state, read_timeout=600.0)
            waiting = asyncio.create_task(fetch(client, outbound()))
            for _ in range(400):  # bounded: until the server has the request (or 2 s)
                if state.requests:
                    break
                await asyncio.sleep(0.005)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # An armed 600 s read timer would keep the abandoned exchange alive that long.
            assert len(exchanges) == 1
            assert exchanges[0]._timer is None
            await client.aclose()

    run(scenario)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n",
        # 304's Content-Length describes the representation it stands for: no body follows.
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nX-Kind: none\r\n\r\n",
    ],
    ids=["204", "304"],
)
def test_answers_without_a_body_end_at_their_head_and_keep_the_connection(answer: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await read_request(reader, state)
        writer.write(answer)
        await answer_each(reader, writer, state)

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state)
            response = await client.send(outbound("GET", b""))
            assert (response.status, response.headers[-1]) in {(204, (b"x-kind", b"none")), (304, (b"x-kind", b"none"))}
            assert [chunk async for chunk in response.body()] == []
            await response.aclose()
            assert await fetch(client, outbound()) == (200, b"{}")
            await client.aclose()
        assert state.connections == 1

    run(scenario)


def test_trailers_end_a_chunked_body_and_are_not_relayed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await read_request(reader, state)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n"
            b"Trailer: X-Checksum\r\n\r\n"
            b"6\r\nline1\n\r\n6\r\nline2\n\r\n0\r\nX-Checksum: abc\r\n\r\n"
        )
        await answer_each(reader, writer, state)

    async def scenario() -> None:
        async with serving(handler) as state:
            client = upstream(state)
            response = await client.send(outbound())
            assert b"".join([chunk async for chunk in response.body()]) == b"line1\nline2\n"
            assert [name for name, _ in response.headers] == [b"content-type", b"transfer-encoding", b"trailer"]
            await response.aclose()
            assert await fetch(client, outbound()) == (200, b"{}")
            await client.aclose()
        assert state.connections == 1

    run(scenario)


@pytest.mark.parametrize(
    ("url", "shown"),
    [("http://127.0.0.1:{port}", "127.0.0.1:{port}"), ("http://[::1]:{port}", "[::1]:{port}")],
    ids=["ipv4", "ipv6"],
)
def test_a_refused_connection_names_the_address(url: str, shown: str) -> None:
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        client = HttptoolsUpstream(
            url.format(port=port), connect_timeout=2.0, read_timeout=1.0, write_timeout=1.0, max_connections=1
        )
        with pytest.raises(UpstreamUnavailable) as caught:
            await client.send(outbound())
        await client.aclose()
        # Why depends on the machine (no IPv6 loopback: another errno); where must be exact.
        assert caught.value.message.startswith(f"upstream {shown.format(port=port)} unavailable: ")

    run(scenario)


def test_a_tls_failure_says_what_failed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")  # not TLS at all

    async def scenario() -> None:
        async with serving(handler) as state:
            tls = HttptoolsUpstream(
                f"https://127.0.0.1:{state.port}",
                connect_timeout=2.0,
                read_timeout=1.0,
                write_timeout=1.0,
                max_connections=1,
            )
            with pytest.raises(UpstreamUnavailable) as caught:
                await tls.send(outbound())
            await tls.aclose()
        # OpenSSL's reason, not os.strerror() of OpenSSL's error number.
        assert caught.value.message == f"upstream 127.0.0.1:{state.port} unavailable: WRONG_VERSION_NUMBER"

    run(scenario)


def test_the_reuse_check_works_past_select_s_1024_descriptors() -> None:
    """A gateway with a thousand streams open numbers its sockets past FD_SETSIZE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:

        async def scenario() -> None:
            async with serving(answer_each) as state:
                client = upstream(state)
                assert await fetch(client, outbound()) == (200, b"{}")
                (conn,) = client._pool._idle
                assert conn.transport is not None
                assert conn.transport.get_extra_info("socket").fileno() > 1024
                assert await fetch(client, outbound()) == (200, b"{}")  # reused, after the check
                await client.aclose()
            assert state.connections == 1

        run(scenario)
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


def test_a_pushed_piece_never_overtakes_the_one_the_reader_holds() -> None:
    """Pieces go to the sink only while the reader waits for one: a piece that arrives while it is
    still busy with the last one (a relay waiting for its client) queues behind it."""

    async def scenario() -> None:
        second, last = asyncio.Event(), asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Server) -> None:
            await read_request(reader, state)
            writer.write(STREAM_HEAD + b"2\r\na\n\r\n")
            await second.wait()
            writer.write(b"2\r\nb\n\r\n")
            await last.wait()
            writer.write(b"2\r\nc\n\r\n0\r\n\r\n")
            await writer.drain()

        async with serving(handler) as state:
            client = upstream(state)
            response = await client.send(Outbound("POST", "/api/chat", [], b"{}"))
            pushed: list[bytes] = []
            taking = False

            def sink(data: bytes) -> bool:
                if taking:
                    pushed.append(data)
                return taking

            response.push(sink)
            body = response.body()
            assert await anext(body) == b"a\n"  # refused by the sink: through body()
            taking = True
            second.set()
            before = response.received
            await _until(lambda: response.received > before)
            assert pushed == []  # the reader still holds "a": "b" waits its turn
            assert await anext(body) == b"b\n"
            last.set()
            # The reader waits now: "c" goes to the sink, and the body ends.
            assert [piece async for piece in body] == []
            assert pushed == [b"c\n"]
            await response.aclose()
            await client.aclose()

    run(scenario)
