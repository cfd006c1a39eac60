"""The scale scenario's measurements: one size of one thing that grows, on a gateway just started.

Each function measures one size on a running, warmed gateway and returns flat figures (``None``
where nothing could be measured). CPU is the scheduler's nanosecond account of the gateway's
threads (``procstat.task_cpu_ns``, ``Meter(precise=True)``): a key refresh or a usage query on few
rows costs far less than the 10 ms tick of /proc/<pid>/stat. Key changes and creates go
through ``KeyAdmin`` in a thread of this process, as the CLI makes them; the gateway only sees
what any other writer's change would show it.

It knows nothing of how the sizes were set up, nor of the report.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench import procstat
from bench.client import Exchange, close_all
from bench.load import closed_loop, fetch, open_many, streams
from bench.meter import Meter
from bench.payloads import Target, small_chat, stream_chat
from bench.plan import ScalePlan
from bench.stall import Attack, stall
from bench.stamps import Format
from bench.stats import percentile
from gateway.keys.management import KeyAdmin, KeyChange
from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import open_keystore

Figures = dict[str, float | None]
STALL_CAP = 120.0
# The keys gateways poll their store this often (GATEWAY_KEY_REFRESH_INTERVAL, 1 s by default), so
# that a refresh's cost is measured over many changes; the latency window still changes a key once
# a second.
KEY_REFRESH = 0.2
MIN_CHANGES = 1
USAGE_PATHS = {"usage": "/admin/api/usage", "daily": "/admin/api/usage/daily"}
# The admin page's keys table: a page of keys, and a search (found among the filler keys).
KEYS_PATHS = {"keys_page": "/admin/api/keys?limit=50", "keys_search": "/admin/api/keys?q=scale-0009&limit=50"}


def _ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


@dataclass
class Paced:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0


async def paced(target: Target, request: bytes, clients: int, every: float, seconds: float) -> Paced:
    """``clients`` connections, each sending ``request`` every ``every`` seconds (or as soon as its
    last answer came, when that was late): requests that a blocked event loop holds up."""
    result = Paced()
    connections = await open_many(target, clients)
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + seconds

    async def client(index: int) -> None:
        due = start + every * index / clients
        while due < end:
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            exchange = Exchange()
            connections[index].send(request, exchange)
            await exchange.done
            if exchange.error is not None or exchange.status != 200:
                result.errors += 1
                if exchange.error is not None:
                    return
            else:
                result.latencies_ns.append(exchange.end_ns - exchange.sent_ns)
            due = max(due + every, loop.time())

    try:
        async with asyncio.timeout(seconds + 30):
            await asyncio.gather(*(client(index) for index in range(clients)))
    finally:
        await close_all(connections)
    return result


async def _every_second(window: float, act: Callable[[int], Awaitable[None]]) -> int:
    """``act`` 0.2 s into the window and each second after, leaving the last second for the
    gateway's one-second key poll to see the last change; how many times it acted."""
    count = max(int(window - 1.0), 1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for number in range(count):
        await asyncio.sleep(max(start + 0.2 + number - loop.time(), 0.0))
        await act(number)
    await asyncio.sleep(max(start + window - loop.time(), 0.0))
    return count


def _thread_cpu_ms(work: Callable[[], object]) -> float:
    began = time.thread_time_ns()
    work()
    return (time.thread_time_ns() - began) / 1e6


async def _refresh_cost(pid: int, change: Callable[[int], Awaitable[None]], seconds: float) -> tuple[float, int]:
    """The gateway's CPU per key change as its keyring picks the change up (polling every
    KEY_REFRESH seconds), less what it spends idle; and how many changes that took.

    Changes come as often as the refreshes allow, so that many of them rise above the idle
    gateway's own ~2.5 ms/s and its variation: one change first gives the pace (a change every
    2.5 refreshes' CPU, at least every 3 polls), so that no two changes share one refresh.
    """
    loop = asyncio.get_running_loop()

    async def cpu_over(wait: float) -> float:
        before = procstat.task_cpu_ns(pid)
        await asyncio.sleep(wait)
        return (procstat.task_cpu_ns(pid) - before) / 1e6

    idle_per_s = await cpu_over(seconds / 3) / (seconds / 3)
    await change(0)
    first = await cpu_over(1.0) - idle_per_s
    pace = max(3 * KEY_REFRESH, 2.5 * first / 1000)
    before, start, count = procstat.task_cpu_ns(pid), loop.time(), 0
    while count < MIN_CHANGES or loop.time() - start < seconds:
        await change(count + 1)
        count += 1
        await asyncio.sleep(max(start + count * pace - loop.time(), 0.0))
    spent = (procstat.task_cpu_ns(pid) - before) / 1e6 - idle_per_s * (loop.time() - start)
    return spent / count, count


async def keys(plan: ScalePlan, target: Target, pid: int, database_url: str, change_id: str, rep: int) -> Figures:
    """Keys in the store: the gateway's CPU per key change, KeyAdmin's per create, other
    requests' latency while keys change once a second, RSS."""
    store: SqliteKeyStore = await asyncio.to_thread(open_keystore, database_url)
    admin = KeyAdmin(store)
    try:

        async def change(number: int) -> None:
            rpm = 1_000_000 + rep * 100 + number
            await asyncio.to_thread(admin.update, change_id, KeyChange(limits={"rpm": rpm}))

        rss = procstat.rss_kb(pid) / 1024
        refresh_ms, changes = await _refresh_cost(pid, change, plan.key_quiet_window)
        request = small_chat(target, "/api/chat")
        load, _ = await asyncio.gather(
            paced(target, request, plan.paced_clients, plan.paced_every, plan.key_window),
            _every_second(plan.key_window, change),
        )
        creates = [
            await asyncio.to_thread(_thread_cpu_ms, functools.partial(admin.create, f"new-{rep}-{n}", KeyChange()))
            for n in range(plan.key_creates)
        ]
    finally:
        await asyncio.to_thread(store.close)
    return {
        "refresh_cpu_ms_per_change": refresh_ms,
        "refresh_changes": changes,
        "create_cpu_ms": percentile(creates, 50),
        **_latencies(load),
        "rss_mib": rss,
    }


def _latencies(load: Paced) -> Figures:
    return {
        "requests_latency_p99_ms": _ms(percentile(load.latencies_ns, 99)),
        "requests_latency_max_ms": _ms(max(load.latencies_ns, default=None)),
        "requests_failed": load.errors,
    }


async def paced_direct(plan: ScalePlan, target: Target) -> Figures:
    """The same paced requests straight to the fast upstream: the latency a gateway adds to."""
    load = await paced(target, small_chat(target, "/api/chat"), plan.paced_clients, plan.paced_every, plan.key_window)
    return _latencies(load)


async def listing(plan: ScalePlan, target: Target, pid: int) -> Figures:
    """``GET /api/tags`` in a closed loop: CPU per request and latency p50 (``pid`` 0: direct)."""
    meter = Meter({"gateway": (pid,) if pid else ()}, precise=True)
    result = await closed_loop(
        target, target.request("GET", "/api/tags"), plan.listing_concurrency, plan.listing_seconds, meter
    )
    count = len(result.latencies_ns)
    figures: Figures = {"tags_latency_p50_ms": _ms(percentile(result.latencies_ns, 50)), "tags_failed": result.errors}
    if pid:
        figures["tags_cpu_ms"] = meter.result.cpu_ms["gateway"] / count if count else None
    return figures


async def admin_read(plan: ScalePlan, target: Target, pid: int, name: str, path: str) -> Figures:
    """One admin read (``path``, its figures named ``name``): CPU and wall time per call, alone;
    then the largest stall of a 50 ms stream while one call loads."""
    request = target.request("GET", path)
    walls = []
    before = procstat.task_cpu_ns(pid)
    for _ in range(plan.usage_calls):
        answer = await fetch(target, request, within=STALL_CAP)
        if answer.status != 200:
            raise RuntimeError(f"{path} answered {answer.status}: {bytes(answer.body[:200])!r}")
        walls.append(answer.end_ns - answer.sent_ns)
    cpu_ns = (procstat.task_cpu_ns(pid) - before) / plan.usage_calls
    result = await stall(target, Attack(path, b"", "GET"), Meter({}), STALL_CAP)
    if result.error is not None or result.attack_status != 200:
        raise RuntimeError(f"{path} beside a stream: {result.error or result.attack_status}")
    return {
        f"{name}_cpu_ms": cpu_ns / 1e6,
        f"{name}_wall_ms": _ms(percentile(walls, 50)),
        f"{name}_stall_ms": _ms(result.stream_delay_max_ns),
    }


async def requests(plan: ScalePlan, target: Target, pid: int) -> Figures:
    """Small chats in a closed loop: the gateway's CPU per request."""
    meter = Meter({"gateway": (pid,)}, precise=True)
    result = await closed_loop(
        target, small_chat(target, "/api/chat"), plan.upstream_concurrency, plan.upstream_seconds, meter
    )
    count = len(result.latencies_ns)
    return {
        "request_cpu_ms": meter.result.cpu_ms["gateway"] / count if count else None,
        "request_failed": result.errors,
    }


async def relay(plan: ScalePlan, target: Target, pid: int, fmt: Format, count: int) -> Figures:
    """``count`` concurrent streams, as scenario (b): the gateway's CPU per 1000 relayed chunks."""
    requests = [stream_chat(target, fmt, plan.stream_tokens, plan.token_interval) for _ in range(count)]
    meter = Meter({"gateway": (pid,)}, precise=True)
    cap = plan.stream_ramp + plan.stream_tokens * plan.token_interval + 30
    result = await streams(target, fmt, requests, plan.stream_tokens, plan.stream_ramp, meter, cap)
    chunks = result.chunks
    return {
        f"{fmt.value}_cpu_ms_per_1k_chunks": meter.result.cpu_ms["gateway"] * 1000 / chunks if chunks else None,
        f"{fmt.value}_chunks_lost": result.lost,
    }
