"""One benchmark run: start the fast upstream(s) and the gateway(s), probe, measure, always clean up."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import resource
import secrets
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import uvloop

from bench import procstat
from bench.context import GATEWAY, Context
from bench.features import probe
from bench.fleet import admin_upstream, gateway_settings, running_upstreams, side
from bench.gateway import GatewayServer, running_gateway, source_digest
from bench.payloads import Target
from bench.pinning import choose
from bench.plan import Plan, SoakPlan
from bench.report import build
from bench.scenarios import BUILDERS, Outcome, run_scenario
from bench.soak import measure as measure_soak
from bench.soakfigures import empty

PREPARE_TIMEOUT = 120.0
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)


@dataclass(frozen=True)
class Options:
    plan: Plan
    scenarios: tuple[str, ...]
    pin: bool
    max_seconds: float
    quick: bool
    command: str
    log: Path | None = None  # the children's output is appended here
    gateway_env: dict[str, str] = field(default_factory=dict)
    soak: SoakPlan | None = None  # run the soak instead of the scenarios
    # The gateway in front of this many fast upstreams; several counts: one gateway side each.
    upstreams: tuple[int, ...] = (1,)


def _raise_fd_limit() -> None:
    # Every stream holds a socket here, and two in the gateway (which inherits this limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _steal_pct(before: Mapping[str, float], seconds: float) -> dict[str, float]:
    """Steal over the whole run, per CPU, as a share of that CPU's time."""
    after = procstat.steal_ms()
    return {line: 100 * (after[line] - before.get(line, 0.0)) / (seconds * 1000) for line in after if line != "cpu"}


def _public(settings: Mapping[str, str]) -> dict[str, str]:
    return {name: "<redacted>" if _SECRET_NAME.search(name) else value for name, value in settings.items()}


def run(options: Options) -> dict[str, Any]:
    started = datetime.now(UTC)
    began = time.monotonic()
    load_before = os.getloadavg()
    steal_before = procstat.steal_ms()
    pinning = choose(options.pin)
    pinning.apply_to_self()
    _raise_fd_limit()
    counts = options.upstreams
    with (
        TemporaryDirectory(prefix="gateway-bench-") as tmp,
        running_upstreams(max(counts), Path(tmp), pinning, options.max_seconds + 60, options.log) as upstreams,
        ExitStack() as stack,
    ):
        servers: dict[str, GatewayServer] = {}
        for count in counts:
            name = side(count, counts)
            settings = gateway_settings(upstreams[:count])
            # Further sides start from a copy of the first's database: the same key, no more CLI runs.
            first = next(iter(servers.values()), None)
            servers[name] = stack.enter_context(
                running_gateway(settings, Path(tmp), pinning, options.gateway_env, options.log, name, first)
            )
        server = servers[side(counts[0], counts)]
        port = upstreams[0].port
        ctx = Context(
            direct=Target("direct", "127.0.0.1", port, server.key),
            upstreams=tuple(Target("upstream", "127.0.0.1", upstream.port) for upstream in upstreams),
            upstream_pids=tuple(upstream.pid for upstream in upstreams),
            servers=servers,
            admin_upstreams={side(count, counts): admin_upstream(count) for count in counts},
            plan=options.plan,
            tag=secrets.token_hex(4),
            warm_seconds=0.1 if options.quick else 0.3,
            steal_lines=pinning.steal_lines(),
        )
        meta, outcomes, soak = uvloop.run(_measure(ctx, options))
        meta["gateway"] = {
            "version": server.version,
            "source_sha256": source_digest(),
            "package": server.package(),
        }
        meta["gateway_settings"] = _public(server.settings)
        meta["gateway_starts"] = server.starts
        for count, entry in zip(counts, meta["sides"], strict=True):
            entry.update(
                upstreams=count, settings=_public(servers[entry["side"]].settings), starts=servers[entry["side"]].starts
            )
    meta.update(
        {
            "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "duration_s": round(time.monotonic() - began, 1),
            "command": options.command,
            "quick": options.quick,
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "pinning": pinning.note,
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "steal_pct": _steal_pct(steal_before, time.monotonic() - began),
            "repeat": 1 if options.soak else options.plan.repeat,
            "upstreams": list(counts),
            "plan": asdict(options.soak or options.plan),
        }
    )
    return build(meta, [BUILDERS[key](ctx) for key in options.scenarios], outcomes, soak)


async def _measure(ctx: Context, options: Options) -> tuple[dict[str, Any], list[Outcome], dict[str, Any] | None]:
    deadline = asyncio.get_running_loop().time() + options.max_seconds
    async with asyncio.timeout(PREPARE_TIMEOUT):
        rss_start = {name: procstat.rss_kb(server.pid) / 1024 for name, server in ctx.servers.items()}
        features = {name: await probe(server, ctx.gateway(name)) for name, server in ctx.servers.items()}
        await ctx.warm_up(ctx.direct)
        for name in ctx.servers:
            await ctx.warm_up(ctx.gateway(name))
        await asyncio.sleep(0.5)
    rss_idle = {name: procstat.rss_kb(server.pid) / 1024 for name, server in ctx.servers.items()}
    meta: dict[str, Any] = {
        "features": features[GATEWAY],
        "gateway_rss_start_mib": rss_start[GATEWAY],
        "gateway_rss_idle_mib": rss_idle[GATEWAY],
        # One entry per gateway side (one unless --upstreams names several counts).
        "sides": [
            {"side": name, "features": features[name], "rss_start_mib": rss_start[name], "rss_idle_mib": rss_idle[name]}
            for name in ctx.servers
        ],
    }
    if options.soak is not None:
        return meta, [], await _soak(ctx, options.soak, deadline, options.max_seconds)
    scenarios = [BUILDERS[key](ctx) for key in options.scenarios]
    outcomes = [Outcome.of(scenario, ctx.sides()) for scenario in scenarios]
    try:
        async with asyncio.timeout_at(deadline):
            for scenario, outcome in zip(scenarios, outcomes, strict=True):
                print(f"bench: scenario ({scenario.key}) ...", file=sys.stderr, flush=True)
                await run_scenario(ctx, scenario, outcome)
    except TimeoutError:
        # The report still gets written, with what was measured before the cap.
        for outcome in outcomes:
            if not outcome.finished:
                outcome.error = f"stopped by the run's hard cap ({options.max_seconds / 60:g} min)"
    return meta, outcomes, None


async def _soak(ctx: Context, plan: SoakPlan, deadline: float, max_seconds: float) -> dict[str, Any]:
    print(f"bench: soak, {plan.streams} streams for {plan.minutes:g} min ...", file=sys.stderr, flush=True)
    try:
        # The soak shortens itself to fit the cap; this bound is the backstop.
        async with asyncio.timeout_at(deadline):
            return await measure_soak(ctx, plan, deadline)
    except TimeoutError:
        return empty(plan, f"stopped by the run's hard cap ({max_seconds / 60:g} min)")
