"""The soak: N streams kept open for minutes, small requests beside them, cuts and hang-ups mixed in.

Each of N slots runs one stream after another (soakstream.py draws each one's shape), so N
streams are open all the time; a slot keeps its connection while the gateway does, and opens a
new one after a hang-up, a broken response, or for a share of streams. A few connections send
small non-streamed requests in a closed loop with a short pause. The gateway's RSS and CPU are
sampled every few seconds; the fast upstream's notes of mid-stream closes are collected as the
run goes, so its table stays small.

Runs against the gateway only: a direct baseline means nothing for streams the gateway must end
with an error record. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from bench import procstat
from bench.client import Connection, Exchange
from bench.context import SMALL_PATHS, Context
from bench.load import OPEN_TIMEOUT, fetch
from bench.meter import Meter
from bench.payloads import small_chat
from bench.plan import SoakPlan
from bench.soakfigures import empty, figures
from bench.soakstream import Shape, SoakStream, Tally, draw, keeps_alive

STALL_MARGIN = 10.0  # beyond a stream's own length, before it counts as stalled
SMALL_TIMEOUT = 10.0
COLLECT_EVERY = 5.0  # seconds between reads of the upstream's close notes
COLLECT_TIMEOUT = 3.0  # for the last close notes, after the load ended
RESERVE = 15.0  # kept before the run's hard cap: settling, the report


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the window opened
    rss_kb: int
    cpu_ms: float  # the gateway's, since it started
    open_streams: int


@dataclass
class Bucket:
    """One timeline row: chunks by their send time, streams by their end time."""

    delays_ns: array[int] = field(default_factory=lambda: array("q"))
    streams: int = 0


@dataclass
class Small:
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # the connection broke, or no answer in time
    latencies_ns: list[int] = field(default_factory=list)


async def measure(ctx: Context, plan: SoakPlan, deadline: float) -> dict[str, Any]:
    """Run the soak, shortened if the run's hard cap (``deadline``, loop time) leaves less room."""
    loop = asyncio.get_running_loop()
    after_window = (plan.tokens[1] + 1) * plan.token_interval + STALL_MARGIN + COLLECT_TIMEOUT + RESERVE
    seconds = min(plan.seconds, deadline - loop.time() - after_window)
    shortened = None
    if seconds < plan.seconds:
        shortened = f"the run's hard cap left {max(seconds, 0) / 60:.2f} of the {plan.minutes:g} minutes planned"
    if seconds <= 0:
        return empty(plan, shortened)
    soak = Soak(ctx, plan, seconds)
    meter = ctx.meter(ctx.gateway(), watch=True)
    await soak.run(meter)
    return figures(soak, meter.result, await ctx.rss_after_mib(), shortened or soak.error)


class Soak:
    def __init__(self, ctx: Context, plan: SoakPlan, seconds: float) -> None:
        self._ctx = ctx
        self.plan = plan
        self._target = ctx.gateway()
        self._loop = asyncio.get_running_loop()
        self.seconds = seconds  # the window: no stream starts after it
        self.tally = Tally()
        self.small = Small()
        self.samples: list[Sample] = []
        self.buckets: list[Bucket] = []
        self.hung_up: dict[str, int] = {}  # tag -> monotonic_ns at which the client closed
        self.closes: dict[str, int] = {}  # tag -> monotonic_ns at which the upstream saw the close
        self.started = 0
        self.open = 0
        self.error: str | None = None
        self.start_ns = 0
        self.drained_at = 0.0  # seconds from the window's start until the last stream ended
        self._start = self._end = 0.0

    async def run(self, meter: Meter) -> None:
        """Open the window, keep the load up until it closes, then let the running streams end."""
        plan = self.plan
        async with meter:
            self._start = self._loop.time()
            self._end = self._start + self.seconds
            self.start_ns = time.monotonic_ns()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._sample())
                for index in range(plan.streams):
                    group.create_task(self._slot(index, self._start + index * plan.ramp / plan.streams))
                for index in range(plan.small_clients):
                    group.create_task(self._small(index))
            self.drained_at = self._loop.time() - self._start
        await self._collect_all()

    # the load
    async def _slot(self, index: int, first: float) -> None:
        plan = self.plan
        rng = random.Random(f"{plan.seed}-{index}")
        connection: Connection | None = None
        await asyncio.sleep(max(first - self._loop.time(), 0.0))
        # A stream lasts a token interval at least, unless it fails (then the slot pauses that
        # long) or is hung up on at its first token: four per interval is a generous bound.
        most = int(4 * self.seconds / plan.token_interval) + 100
        try:
            for number in range(most):
                if self._loop.time() >= self._end:
                    return
                shape = draw(rng, plan, f"{self._ctx.tag}-soak-{index}-{number}")
                if connection is not None and shape.fresh:
                    connection.close()
                    connection = None
                if connection is None:
                    try:
                        connection = await Connection.open(self._target.host, self._target.port, OPEN_TIMEOUT)
                    except (OSError, TimeoutError):
                        self.tally.connect_failures += 1
                        await asyncio.sleep(plan.token_interval)
                        continue
                stream = await self._stream(connection, shape)
                if not stream.reusable:
                    connection.close()
                    connection = None
                if stream.status != 200 or (stream.error is not None and not stream.hung_up_ns):
                    await asyncio.sleep(plan.token_interval)  # no hot loop against a failing gateway
        finally:
            if connection is not None:
                connection.close()

    async def _stream(self, connection: Connection, shape: Shape) -> SoakStream:
        plan = self.plan
        stream = SoakStream(shape, connection)
        self.started += 1
        self.open += 1
        try:
            connection.send(shape.request(self._target, plan.token_interval), stream)
            within = (shape.tokens + 1) * plan.token_interval + STALL_MARGIN
            done, _ = await asyncio.wait([stream.done], timeout=within)
            if not done:
                stream.stalled = True
                stream.on_lost(f"no end within {within:g} s")
        finally:
            self.open -= 1
        if stream.hung_up_ns:
            self.hung_up[shape.tag] = stream.hung_up_ns
        self.tally.add(stream)
        self._file(stream)
        return stream

    def _file(self, stream: SoakStream) -> None:
        size_ns = self.plan.bucket * 1e9
        reader = stream.reader
        for sent, delay in zip(reader.sent_ns, reader.delays_ns, strict=True):
            self._bucket(sent, size_ns).delays_ns.append(delay)
        self._bucket(time.monotonic_ns(), size_ns).streams += 1

    def _bucket(self, at_ns: int, size_ns: float) -> Bucket:
        index = max(int((at_ns - self.start_ns) // size_ns), 0)
        while len(self.buckets) <= index:
            self.buckets.append(Bucket())
        return self.buckets[index]

    async def _small(self, index: int) -> None:
        plan, small = self.plan, self.small
        requests = [small_chat(self._target, path) for path in SMALL_PATHS]
        connection: Connection | None = None
        try:
            for number in range(int(self.seconds / plan.small_pause) + 1):
                if self._loop.time() >= self._end:
                    return
                if connection is None:
                    try:
                        connection = await Connection.open(self._target.host, self._target.port, OPEN_TIMEOUT)
                    except (OSError, TimeoutError):
                        small.errors += 1
                        await asyncio.sleep(plan.small_pause)
                        continue
                exchange = Exchange()
                exchange.headers = []
                connection.send(requests[(index + number) % len(requests)], exchange)
                done, _ = await asyncio.wait([exchange.done], timeout=SMALL_TIMEOUT)
                if not done:
                    exchange.on_lost("no answer in time")
                if exchange.error is not None:
                    small.errors += 1
                else:
                    status = str(exchange.status)
                    small.statuses[status] = small.statuses.get(status, 0) + 1
                    small.latencies_ns.append(exchange.end_ns - exchange.sent_ns)
                if exchange.error is not None or not keeps_alive(exchange):
                    connection.close()
                    connection = None
                await asyncio.sleep(plan.small_pause)
        finally:
            if connection is not None:
                connection.close()

    # what is watched
    async def _sample(self) -> None:
        """The gateway's RSS and CPU every few seconds, and once more as the window closes."""
        pid = self._ctx.server.pid
        next_collect = self._start + COLLECT_EVERY
        for _ in range(int(self.seconds / self.plan.sample_every) + 10):
            now = self._loop.time()
            try:
                sample = Sample(now - self._start, procstat.rss_kb(pid), procstat.cpu_ms(pid), self.open)
            except OSError:
                self.error = "the gateway exited during the soak"
                return
            self.samples.append(sample)
            if now >= self._end:
                return
            if now >= next_collect:
                next_collect = now + COLLECT_EVERY
                await self._collect()
            await asyncio.sleep(max(min(self.plan.sample_every, self._end - self._loop.time()), 0.001))

    async def _collect(self) -> None:
        """The upstream's close notes so far (the read clears them there)."""
        upstream = self._ctx.upstream
        try:
            reply = await fetch(upstream, upstream.request("GET", "/_bench/closed"))
            self.closes.update(json.loads(bytes(reply.body)))
        except (OSError, TimeoutError, ValueError):
            return  # the next read gets them

    async def _collect_all(self) -> None:
        """Until the upstream has noted every hang-up, or a while has passed."""
        deadline = self._loop.time() + COLLECT_TIMEOUT
        while True:
            await self._collect()
            if self.hung_up.keys() <= self.closes.keys() or self._loop.time() > deadline:
                return
            await asyncio.sleep(0.05)
