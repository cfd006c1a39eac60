"""Client hang-ups: how long until the upstream sees the connection close.

Each stream is opened, its first token read, and the client socket closed; the fast upstream
notes when the close reached it. Hang-ups run one after another so each is timed on its own. A
gateway fronting several fast upstreams may send each stream to any of them: all are asked.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.client import Connection, Exchange, close_all
from bench.load import OPEN_TIMEOUT, fetch
from bench.payloads import Target, stream_chat
from bench.stamps import Format

GAP = 0.005  # between hang-ups
COLLECT_TIMEOUT = 3.0
LONG_STREAM_TOKENS = 1000


class _HangUp(Exchange):
    """Closes its connection as soon as the first body bytes arrive."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self._connection = connection
        self.closed_ns = 0

    def on_body(self, data: bytes, received_ns: int) -> None:
        if not self.closed_ns:
            self.closed_ns = time.monotonic_ns()
            self._connection.close()
            self._finish()


@dataclass
class HangUps:
    delays_ns: list[int] = field(default_factory=list)
    attempted: int = 0
    unseen: int = 0  # hang-ups the upstream never saw (its stream kept running)


async def hang_ups(
    target: Target, upstreams: Sequence[Target], count: int, tag: str, interval: float, cap: float
) -> HangUps:
    closed: dict[str, int] = {}
    async with asyncio.timeout(cap):
        for index in range(count):
            name = f"{tag}-{index}"
            connection = await Connection.open(target.host, target.port, OPEN_TIMEOUT)
            exchange = _HangUp(connection)
            try:
                connection.send(stream_chat(target, Format.NDJSON, LONG_STREAM_TOKENS, interval, name), exchange)
                await exchange.done
            finally:
                await close_all([connection])
            if exchange.closed_ns:
                closed[name] = exchange.closed_ns
            await asyncio.sleep(GAP)
        seen = await _collect(upstreams, set(closed))
    result = HangUps(attempted=count)
    for name, client_ns in closed.items():
        if name in seen:
            result.delays_ns.append(seen[name] - client_ns)
        else:
            result.unseen += 1
    result.unseen += count - len(closed)
    return result


async def _collect(upstreams: Sequence[Target], names: set[str]) -> dict[str, int]:
    """Ask the upstreams' control route until every name is in, or give up after a while."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + COLLECT_TIMEOUT
    while True:
        for upstream in upstreams:
            reply = await fetch(upstream, upstream.request("GET", "/_bench/closed"))
            seen.update(json.loads(bytes(reply.body)))
        if names <= seen.keys() or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.05)
