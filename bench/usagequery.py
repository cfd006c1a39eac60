"""Usage queries at a year of history: what the admin usage endpoints and ``ollama-gateway usage``
cost over ~1,000,000 usage rows, and how long a 50 ms-spaced stream stalls while the chart loads.

``measure`` fills a database with ``days`` x ``keys`` x ``models`` rows of usage (through the
usage store, as flushes write them), starts the fast upstream and a gateway on that database
(pinned as the benchmark pins them), and reports per endpoint the gateway's CPU per request
(/proc, over a batch of requests) and the wall time per request seen by the client, as medians
and ranges; the CLI's query (what ``ollama-gateway usage`` runs, in this process) likewise; and the
largest gap between tokens of a 50 ms NDJSON stream through the gateway while the page's two chart
requests (``usage/daily`` and ``usage``) are sent back to back, against the same stream alone.

Run alone: ``python -m bench.usagequery [--days 365 --keys 250 --models 10] [--json]``.
It imports only the usage store and report (``gateway.usage``) from the gateway; the rest is
the benchmark's own harness, so it measures older gateways too (anything with those modules).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlencode

from bench.client import Buffered, Connection, close_all
from bench.fleet import gateway_settings, running_upstreams
from bench.gateway import running_gateway
from bench.load import OPEN_TIMEOUT
from bench.payloads import Target, stream_chat
from bench.pinning import Pinning, choose
from bench.procstat import cpu_ms
from bench.stamps import Format, StampReader

END = dt.date(2026, 12, 31)
STREAM_INTERVAL = 0.05
# The admin requests measured: the page's chart (daily + the totals beside it) and the report's
# other groupings and filters, as ``ollama-gateway usage`` offers them.
ENDPOINTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("daily by key", "/admin/api/usage/daily", {"stack": "key"}),
    ("daily by model", "/admin/api/usage/daily", {"stack": "model"}),
    ("daily by model, one key", "/admin/api/usage/daily", {"stack": "model", "key": "key-0007"}),
    ("daily by key, 30 days", "/admin/api/usage/daily", {"stack": "key", "since": str(END - dt.timedelta(days=29))}),
    ("usage by key", "/admin/api/usage", {"by": "key"}),
    ("usage by model", "/admin/api/usage", {"by": "model"}),
    ("usage by day", "/admin/api/usage", {"by": "day"}),
    ("usage by model, one key", "/admin/api/usage", {"by": "model", "key": "key-0007"}),
    ("usage by key, csv", "/admin/api/usage", {"by": "key", "format": "csv"}),
)
CHART = (ENDPOINTS[0], ENDPOINTS[4])


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @staticmethod
    def of(values: Sequence[float]) -> Spread:
        return Spread(round(statistics.median(values), 2), round(min(values), 2), round(max(values), 2))


@dataclass(frozen=True)
class Figure:
    name: str
    cpu_ms: Spread  # the gateway's CPU per request (or this process's, for the CLI's query)
    wall_ms: Spread


@dataclass(frozen=True)
class UsageQueryResult:
    rows: int
    fill_s: float
    endpoints: list[Figure]
    cli: list[Figure]
    # The largest gap between two tokens of the stream, per round: alone, and while the chart's
    # requests run back to back (``chart_loads`` times in all); rounds alternate.
    stream_gap_alone_ms: Spread
    stream_gap_loaded_ms: Spread
    chart_loads: int


def populate(database_url: str, *, days: int, keys: int, models: int) -> int:
    """``days`` days up to ``END`` of usage for ``keys`` keys x ``models`` models, one batch a day."""
    from gateway.usage.store import UsageCounts, UsageKey, open_usage_store

    store = open_usage_store(database_url)
    rows = 0
    try:
        for offset in range(days):
            day = (END - dt.timedelta(days=days - 1 - offset)).isoformat()
            batch = {
                UsageKey(day, f"k{key:04d}", f"key-{key:04d}", f"model-{model}"): UsageCounts(
                    1 + (key + offset) % 7,
                    10 * (1 + (key * model + offset) % 13),
                    5 * (1 + (key + model) % 11),
                    key % 2,
                )
                for key in range(keys)
                for model in range(models)
            }
            store.add(batch)
            rows += len(batch)
    finally:
        store.close()
    return rows


def _cli_queries(database_url: str, repeats: int) -> list[Figure]:
    """What ``ollama-gateway usage --json`` runs once its settings are read: open, report, print."""
    from gateway.usage.report import UsageQuery, report
    from gateway.usage.store import open_usage_store

    figures = []
    for name, query in (
        ("cli usage --by key", UsageQuery(by="key")),
        ("cli usage --by model", UsageQuery(by="model")),
        ("cli usage --by day", UsageQuery(by="day")),
        ("cli usage --by model --key key-0007", UsageQuery(by="model", key="key-0007")),
    ):
        cpu, wall = [], []
        for _ in range(repeats):
            started_cpu, started = time.process_time(), time.perf_counter()
            store = open_usage_store(database_url)
            try:
                json.dumps(report(store, query).as_json())
            finally:
                store.close()
            cpu.append((time.process_time() - started_cpu) * 1000)
            wall.append((time.perf_counter() - started) * 1000)
        figures.append(Figure(name, Spread.of(cpu), Spread.of(wall)))
    return figures


async def _get(connection: Connection, target: Target, path: str, params: dict[str, str]) -> Buffered:
    exchange = Buffered()
    connection.send(target.request("GET", f"{path}?{urlencode(params)}"), exchange)
    await exchange.done
    if exchange.status != 200:
        raise RuntimeError(f"{path} {params}: {exchange.status} {bytes(exchange.body[:200])!r} {exchange.error}")
    return exchange


async def _endpoints(target: Target, pid: int, repeats: int) -> list[Figure]:
    connection = await Connection.open(target.host, target.port, OPEN_TIMEOUT)
    figures = []
    try:
        for name, path, params in ENDPOINTS:
            first = await _get(connection, target, path, params)  # warm: caches, the first plan
            # Batches of about a second, so that clock ticks (10 ms) do not blur the CPU figure.
            batch = max(1, min(20, int(1e9 / max(1, first.end_ns - first.sent_ns))))
            cpu, wall = [], []
            for _ in range(repeats):
                before = cpu_ms(pid)
                for _ in range(batch):
                    done = await _get(connection, target, path, params)
                    wall.append((done.end_ns - done.sent_ns) / 1e6)
                cpu.append((cpu_ms(pid) - before) / batch)
            figures.append(Figure(name, Spread.of(cpu), Spread.of(wall)))
    finally:
        await close_all([connection])
    return figures


async def _largest_gap(target: Target, seconds: float, load: bool) -> tuple[float, int]:
    """The largest gap between two tokens' arrivals, in ms, over ``seconds`` of a 50 ms stream;
    with ``load``, while the chart's two requests are sent back to back on another connection."""
    streamed = await Connection.open(target.host, target.port, OPEN_TIMEOUT)
    loader = await Connection.open(target.host, target.port, OPEN_TIMEOUT)
    reader = StampReader(Format.NDJSON)
    arrivals: list[int] = []
    settled = asyncio.Event()

    class Stream(Buffered):
        def on_body(self, data: bytes, received_ns: int) -> None:
            before = reader.tokens
            reader.feed(data, received_ns)
            arrivals.extend([received_ns] * (reader.tokens - before))
            if len(arrivals) >= 5:
                settled.set()

    loads = 0
    try:
        stream = Stream()
        tokens = int(seconds / STREAM_INTERVAL) + 20
        streamed.send(stream_chat(target, Format.NDJSON, tokens, STREAM_INTERVAL), stream)
        async with asyncio.timeout(seconds + 30):
            await settled.wait()
            start = len(arrivals)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if load:
                    for _, path, params in CHART:
                        await _get(loader, target, path, params)
                    loads += 1
                else:
                    await asyncio.sleep(STREAM_INTERVAL)
            end = len(arrivals)
            await stream.done
    finally:
        await close_all([streamed, loader])
    window = arrivals[start - 1 : end]
    return max(b - a for a, b in itertools.pairwise(window)) / 1e6, loads


def measure(
    workdir: Path,
    *,
    days: int = 400,
    keys: int = 250,
    models: int = 10,
    repeats: int = 5,
    stall_seconds: float = 10.0,
    rounds: int = 3,
    pinning: Pinning | None = None,
) -> UsageQueryResult:
    pinning = pinning or choose(True)
    with (
        running_upstreams(1, workdir, pinning, lifetime=3600.0, log=None) as upstreams,
        running_gateway(gateway_settings(upstreams), workdir, pinning, {}, None) as gateway,
    ):
        # Stopped while its database (where its key was created) is filled, then started on it.
        gateway.stop()
        database_url = gateway.settings["GATEWAY_DATABASE_URL"]
        started = time.perf_counter()
        rows = populate(database_url, days=days, keys=keys, models=models)
        fill_s = time.perf_counter() - started
        cli = _cli_queries(database_url, repeats)
        gateway.start()  # opens (and migrates) the filled database
        target = Target("gateway", "127.0.0.1", gateway.port, gateway.key)
        endpoints = asyncio.run(_endpoints(target, gateway.pid, repeats))
        alone, loaded, loads = [], [], 0
        for _ in range(rounds):
            alone.append(asyncio.run(_largest_gap(target, stall_seconds, load=False))[0])
            gap, count = asyncio.run(_largest_gap(target, stall_seconds, load=True))
            loaded.append(gap)
            loads += count
    return UsageQueryResult(rows, round(fill_s, 1), endpoints, cli, Spread.of(alone), Spread.of(loaded), loads)


def _table(result: UsageQueryResult) -> str:
    lines = [
        f"{result.rows} usage rows (filled in {result.fill_s} s)",
        f"{'request':<40} {'CPU ms median (range)':>26} {'wall ms median (range)':>26}",
    ]
    for figure in [*result.endpoints, *result.cli]:
        lines.append(f"{figure.name:<40} {_spread(figure.cpu_ms):>26} {_spread(figure.wall_ms):>26}")
    lines.append(
        f"largest gap of a 50 ms stream, ms: {_spread(result.stream_gap_alone_ms)} alone, "
        f"{_spread(result.stream_gap_loaded_ms)} while the chart loaded ({result.chart_loads} times)"
    )
    return "\n".join(lines)


def _spread(spread: Spread) -> str:
    return f"{spread.median} ({spread.low}-{spread.high})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.usagequery", description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--keys", type=int, default=250)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stall-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="of the stall, alone and loaded")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    pinning = choose(True)
    pinning.apply_to_self()
    with tempfile.TemporaryDirectory(prefix="usagequery-") as workdir:
        result = measure(
            Path(workdir),
            days=args.days,
            keys=args.keys,
            models=args.models,
            repeats=args.repeats,
            stall_seconds=args.stall_seconds,
            rounds=args.rounds,
            pinning=pinning,
        )
    print(json.dumps(asdict(result), indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
