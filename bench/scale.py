"""``python -m bench --scale``: what the gateway costs as what it holds and serves grows.

Five things grow, each at two or three sizes: keys in the store, models the upstream lists, rows
of usage history, upstreams behind the gateway, concurrent streams. Each size has a gateway
configuration of its own (its own database, filled before it starts; its own upstreams), set up
once; every measurement runs on a freshly started gateway, alone on its core, and each repetition
goes through every size in turn, so a slow drift on the machine touches every size alike. The
figures are compared with the smallest size's (and latencies with a direct connection), per
repetition, so a cost that grows with the size shows as a ratio (scalereport.py).

It decides what runs when; how one size is measured is scalecases.py's, how a store is filled
scalestore.py's, and it knows nothing of the gateway beyond its settings and its CLI-made key.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import uvloop

from bench import procstat, scalecases, scalestore
from bench.fleet import UpstreamProcess, gateway_settings, running_upstreams
from bench.gateway import GatewayServer, source_digest
from bench.load import closed_loop
from bench.meter import Meter
from bench.payloads import Target, small_chat
from bench.pinning import Pinning, choose
from bench.plan import ScalePlan
from bench.scalereport import figures
from bench.stamps import Format

GLOBS = ("model-00*", "model-01*", "model-02*", "model-03*", "model-04*")
Figures = scalecases.Figures


@dataclass
class _Size:
    """One configuration: which thing grows, to what size, its gateway."""

    group: str
    size: int
    server: GatewayServer
    direct: Target  # the same upstream without the gateway, where latency is compared
    extra_key: str = ""  # keys: a filler key to change; models: the five-glob key's secret


@dataclass
class Results:
    """Figures per (group, size, side), one dict per repetition."""

    runs: dict[tuple[str, int, str], list[Figures]]

    def add(self, group: str, size: int, side: str, figures: Figures) -> None:
        self.runs.setdefault((group, size, side), []).append(figures)


def report(
    plan: ScalePlan, pin: bool, log: Path | None, extra: dict[str, str], seconds: float, command: str
) -> dict[str, Any]:
    """The whole ``--scale`` run, within ``seconds``: meta, figures (scalereport.py), raw runs."""
    started = datetime.now(UTC)
    began = time.monotonic()
    load_before = os.getloadavg()
    measured = run(plan, pin, log, extra, began + seconds)
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": command,
        "gateway_version": measured["version"],
        "source_sha256": source_digest(),
        "cpus": os.cpu_count(),
        "load_before": " ".join(f"{value:.2f}" for value in load_before),
        "load_after": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        "duration_s": time.monotonic() - began,
        "pinning": measured["pinning"],
        "repeat": plan.repeat,
        "plan": asdict(plan),
        "notes": measured["notes"],
    }
    runs = [
        {"group": group, "size": size, "side": side, "runs": reps}
        for (group, size, side), reps in measured["runs"].items()
    ]
    return {"meta": meta, "figures": figures(measured["runs"]), "runs": runs, "error": measured["error"]}


def run(plan: ScalePlan, pin: bool, log: Path | None, extra: dict[str, str], deadline: float) -> dict[str, Any]:
    """Set up every size, measure them all ``plan.repeat`` times; the raw figures and notes."""
    pinning = choose(pin)
    pinning.apply_to_self()
    began = time.monotonic()
    lifetime = deadline - began + 60
    results = Results({})
    notes: list[str] = []
    with TemporaryDirectory(prefix="gateway-scale-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        fleet = stack.enter_context(running_upstreams(max(plan.upstream_counts), workdir, pinning, lifetime, log))
        listed = {
            count: stack.enter_context(
                running_upstreams(1, workdir, pinning, lifetime, log, models=count, name=f"models{count}-")
            )[0]
            for count in plan.model_counts
        }
        sizes = _set_up(plan, workdir, pinning, log, extra, fleet, listed, notes)
        for size in sizes:
            stack.callback(size.server.stop)
        print(f"bench: scale set up in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        error = uvloop.run(_measure(plan, sizes, results, deadline))
        version = sizes[0].server.version
    return {"runs": results.runs, "notes": notes, "error": error, "pinning": pinning.note, "version": version}


def _set_up(
    plan: ScalePlan,
    workdir: Path,
    pinning: Pinning,
    log: Path | None,
    extra: dict[str, str],
    fleet: list[UpstreamProcess],
    listed: dict[int, UpstreamProcess],
    notes: list[str],
) -> list[_Size]:
    """Every configuration's gateway and database, filled two at a time."""
    direct = Target("direct", "127.0.0.1", fleet[0].port)
    # One gateway made with the CLI (its key, its database); every configuration starts from a copy.
    template = GatewayServer(gateway_settings(fleet[:1]), workdir, pinning, extra, log, "template")
    if template.key is None:
        raise RuntimeError(f"no key for the scale scenario: {template.key_note}")

    def server(name: str, upstreams: list[UpstreamProcess], more: dict[str, str] | None = None) -> GatewayServer:
        settings = {**(more or {}), **extra}
        return GatewayServer(gateway_settings(upstreams), workdir, pinning, settings, log, name, like=template)

    def keys(count: int) -> _Size:
        made = server(f"keys{count}", fleet[:1], {"GATEWAY_KEY_REFRESH_INTERVAL": str(scalecases.KEY_REFRESH)})
        url = made.settings["GATEWAY_DATABASE_URL"]
        started = time.monotonic()
        ids = scalestore.add_keys(url, count - 1)  # with the benchmark's own key: ``count``
        notes.append(f"{count:,} keys written in {time.monotonic() - started:.1f} s")
        return _Size("keys", count, made, Target(direct.name, direct.host, direct.port, made.key), ids[0])

    def models(count: int) -> _Size:
        made = server(f"models{count}", [listed[count]])
        secret = scalestore.create_key(made.settings["GATEWAY_DATABASE_URL"], "scale-globs", GLOBS)
        return _Size("models", count, made, Target("direct", "127.0.0.1", listed[count].port, made.key), secret)

    def usage(rows: int) -> _Size:
        made = server(f"usage{rows}", fleet[:1])
        started = time.monotonic()
        written = scalestore.add_usage(made.settings["GATEWAY_DATABASE_URL"], rows)
        notes.append(f"{written:,} usage rows written in {time.monotonic() - started:.1f} s")
        return _Size("usage", rows, made, direct)

    def upstreams(count: int) -> _Size:
        return _Size("upstreams", count, server(f"upstreams{count}", fleet[:count]), direct)

    jobs: list[Callable[[], _Size]] = [
        *(lambda count=count: keys(count) for count in plan.key_counts),
        *(lambda count=count: models(count) for count in plan.model_counts),
        *(lambda rows=rows: usage(rows) for rows in plan.usage_rows),
        *(lambda count=count: upstreams(count) for count in plan.upstream_counts),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda job: job(), jobs))


async def _start(plan: ScalePlan, server: GatewayServer) -> Target:
    """Started alone (every other gateway was stopped after its measurement) and warmed; or, at
    smoke size, the one started for the whole run."""
    if plan.fresh_gateway or not server.running:
        await asyncio.to_thread(server.start)
    target = Target("gateway", "127.0.0.1", server.port, server.key)
    await closed_loop(target, small_chat(target, "/api/chat"), 4, plan.warm_seconds, Meter({}))
    return target


async def _stop(plan: ScalePlan, server: GatewayServer) -> None:
    if plan.fresh_gateway:
        server.stop()
        await asyncio.sleep(plan.settle)


async def _measure(plan: ScalePlan, sizes: list[_Size], results: Results, deadline: float) -> str | None:
    loop = asyncio.get_running_loop()
    streams = next(size for size in sizes if size.group == "upstreams" and size.size == plan.upstream_counts[0])
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            if not plan.fresh_gateway:
                # Smoke size: every configuration started at once, each for the whole run.
                await asyncio.gather(*(asyncio.to_thread(size.server.start) for size in sizes))
            for rep in range(plan.repeat):
                print(f"bench: scale, repetition {rep + 1} of {plan.repeat} ...", file=sys.stderr, flush=True)
                for size in sizes:
                    await _one(plan, size, rep, results)
                    await _stop(plan, size.server)
                for count in plan.stream_counts:
                    target = await _start(plan, streams.server)
                    for fmt in Format:
                        figures = await scalecases.relay(plan, target, streams.server.pid, fmt, count)
                        results.add("streams", count, "gateway", figures)
                        await asyncio.sleep(plan.settle)
                    await _stop(plan, streams.server)
    except TimeoutError:
        return f"stopped by the run's cap after {loop.time():.0f} s on the loop clock"
    except (OSError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        for size in sizes:
            size.server.stop()
    return None


async def _one(plan: ScalePlan, size: _Size, rep: int, results: Results) -> None:
    measure: Callable[[Target, int], Awaitable[Figures]]
    if size.group == "keys":
        if size.size == plan.key_counts[0]:
            results.add("keys", size.size, "direct", await scalecases.paced_direct(plan, size.direct))
        url = size.server.settings["GATEWAY_DATABASE_URL"]
        change = size.extra_key

        async def measure(target: Target, pid: int) -> Figures:
            if plan.fresh_gateway:
                await asyncio.sleep(0.5)  # the start's allocations settle before RSS is read
            figures = await scalecases.keys(plan, target, pid, url, change, rep)
            for name, path in scalecases.KEYS_PATHS.items():
                figures |= await scalecases.admin_read(plan, target, pid, name, path)
            return figures

    elif size.group == "models":
        results.add("models", size.size, "direct", await scalecases.listing(plan, size.direct, 0))
        globbed = size.extra_key

        async def measure(target: Target, pid: int) -> Figures:
            figures = await scalecases.listing(plan, target, pid)
            restricted = Target(target.name, target.host, target.port, globbed)
            narrowed = await scalecases.listing(plan, restricted, pid)
            return figures | {f"globs_{name}": value for name, value in narrowed.items()}

    elif size.group == "usage":

        async def measure(target: Target, pid: int) -> Figures:
            figures: Figures = {}
            for name, path in scalecases.USAGE_PATHS.items():
                figures |= await scalecases.admin_read(plan, target, pid, name, path)
            return figures

    else:

        async def measure(target: Target, pid: int) -> Figures:
            return await scalecases.requests(plan, target, pid)

    target = await _start(plan, size.server)
    figures = await measure(target, size.server.pid)
    figures.setdefault("rss_mib", procstat.rss_kb(size.server.pid) / 1024)
    results.add(size.group, size.size, "gateway", figures)
