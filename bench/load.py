"""Load patterns for small requests and for many concurrent streams.

Connections are opened and warmed before a window starts and closed after it ends, so the
window holds only the traffic being measured. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from bench.client import Buffered, Connection, Exchange, close_all
from bench.meter import Meter
from bench.payloads import Target
from bench.stamps import Format, StampReader

OPEN_TIMEOUT = 10.0
OPEN_PARALLEL = 64


async def open_many(target: Target, count: int) -> list[Connection]:
    """``count`` connections, a bounded number being opened at a time."""
    gate = asyncio.Semaphore(OPEN_PARALLEL)

    async def one() -> Connection:
        async with gate:
            return await Connection.open(target.host, target.port, OPEN_TIMEOUT)

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    connections = [item for item in results if isinstance(item, Connection)]
    failures = [item for item in results if isinstance(item, BaseException)]
    if failures:
        await close_all(connections)
        raise failures[0]
    return connections


async def fetch(target: Target, request: bytes, within: float = 10.0) -> Buffered:
    """One request on a fresh connection (probes and control calls)."""
    connection = await Connection.open(target.host, target.port, OPEN_TIMEOUT)
    try:
        exchange = Buffered()
        exchange.headers = []
        connection.send(request, exchange)
        async with asyncio.timeout(within):
            await exchange.done
        return exchange
    finally:
        await close_all([connection])


@dataclass
class ClosedLoop:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0


async def closed_loop(
    target: Target, request: bytes, concurrency: int, seconds: float, meter: Meter, *, cap: int = 1_000_000
) -> ClosedLoop:
    """``concurrency`` clients, each sending its next request as soon as the last one is answered."""
    result = ClosedLoop()
    connections = await open_many(target, concurrency)
    try:
        async with asyncio.timeout(seconds + 30):
            warm_up = ClosedLoop()
            await asyncio.gather(*(_client(c, request, time.monotonic() + seconds, 2, warm_up) for c in connections))
            async with meter:
                deadline = time.monotonic() + seconds
                per_client = max(cap // concurrency, 1)
                await asyncio.gather(*(_client(c, request, deadline, per_client, result) for c in connections))
    finally:
        await close_all(connections)
    return result


async def _one_request(connection: Connection, request: bytes, result: ClosedLoop) -> bool:
    exchange = Exchange()
    connection.send(request, exchange)
    await exchange.done
    if exchange.error is not None or exchange.status != 200:
        result.errors += 1
        return exchange.error is None
    result.latencies_ns.append(exchange.end_ns - exchange.sent_ns)
    return True


async def _client(connection: Connection, request: bytes, deadline: float, count: int, result: ClosedLoop) -> None:
    for _ in range(count):
        if time.monotonic() >= deadline or not await _one_request(connection, request, result):
            return


class _Stamped(Exchange):
    def __init__(self, fmt: Format) -> None:
        super().__init__()
        self.reader = StampReader(fmt)

    def on_body(self, data: bytes, received_ns: int) -> None:
        self.reader.feed(data, received_ns)


@dataclass
class Streams:
    delays_ns: list[int] = field(default_factory=list)
    # Chunks sent once every stream had started: the relay alone, without the start-up rush.
    steady_delays_ns: list[int] = field(default_factory=list)
    ttfb_ns: list[int] = field(default_factory=list)
    chunks: int = 0
    lost: int = 0  # expected token records (plus each stream's terminal record) that never came
    out_of_order: int = 0
    refused: int = 0  # answered with a status other than 200
    cut: int = 0  # broke off (connection lost, or an error record) before their end
    unfinished: int = 0  # still running when the run's time cap came


async def streams(
    target: Target,
    fmt: Format,
    requests: list[bytes],
    tokens: int,
    ramp: float,
    meter: Meter,
    cap: float,
) -> Streams:
    """One stream per request, all open at once; starts are spread evenly over ``ramp`` seconds.

    Spreading the starts over one token interval or more keeps the chunk rate steady instead of
    every stream ticking at the same instant, as independent clients would.
    """
    connections = await open_many(target, len(requests))
    exchanges = [_Stamped(fmt) for _ in requests]
    try:
        loop = asyncio.get_running_loop()
        async with meter:
            start = loop.time() + 0.01
            steady_ns = time.monotonic_ns() + int((0.01 + ramp) * 1e9)
            step = ramp / len(requests)
            for index, (connection, request, exchange) in enumerate(zip(connections, requests, exchanges, strict=True)):
                loop.call_at(start + index * step, connection.send, request, exchange)
            await asyncio.wait([exchange.done for exchange in exchanges], timeout=cap)
        # Taken before closing: closing completes every exchange still waiting.
        running = [not exchange.done.done() for exchange in exchanges]
    finally:
        await close_all(connections)
    result = Streams()
    for exchange, unfinished in zip(exchanges, running, strict=True):
        reader = exchange.reader
        result.delays_ns.extend(reader.delays_ns)
        result.steady_delays_ns.extend(
            delay for sent, delay in zip(reader.sent_ns, reader.delays_ns, strict=True) if sent >= steady_ns
        )
        result.chunks += reader.tokens
        result.lost += max(tokens - reader.tokens, 0) + (0 if reader.ended else 1)
        result.out_of_order += reader.out_of_order
        if reader.first_ns:
            result.ttfb_ns.append(reader.first_ns - exchange.sent_ns)
        if unfinished:
            result.unfinished += 1
        elif exchange.status != 200:
            result.refused += 1
        elif exchange.error is not None or reader.errors or not reader.ended:
            result.cut += 1
    return result
