"""The scenarios as cases, each run against every target in interleaved repetitions.

For rep in 1..N, for each case: a direct run, then a gateway run, so slow drifts on a noisy
machine touch both alike. With several gateway sides (``--upstreams 1,3``) each follows the
direct run, their order turning from one repetition to the next, so none always goes first.
Each run returns a flat dict of figures; report.py aggregates them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.blob import upload
from bench.context import DIRECT, GATEWAY, SMALL_PATHS, Context
from bench.hangups import hang_ups
from bench.load import closed_loop, streams
from bench.meter import Window
from bench.payloads import Target, small_chat, stream_chat
from bench.plan import MiB
from bench.stall import Attack, large_image, many_members, stall
from bench.stamps import Format
from bench.stats import percentile

Figures = dict[str, float | None]


@dataclass(frozen=True)
class Case:
    name: str
    params: dict[str, object]
    run: Callable[[Target, int], Awaitable[Figures]]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    cases: list[Case]
    compare: dict[str, str]  # figure -> "ratio" (gateway / direct) or "added" (gateway - direct)
    cap: float  # wall-clock seconds for the whole scenario
    # The gateway's own cost figures, compared as ratios between gateway sides (with --upstreams)
    # beside the ``compare`` figures.
    gateway_figures: tuple[str, ...] = ()


@dataclass
class Outcome:
    runs: dict[str, dict[str, list[Figures]]] = field(default_factory=dict)  # case -> target -> per rep
    error: str | None = None
    finished: bool = False

    @classmethod
    def of(cls, scenario: Scenario, sides: list[str]) -> Outcome:
        return cls({case.name: {side: [] for side in sides} for case in scenario.cases})


def _ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


def _load_side(window: Window) -> Figures:
    return {
        "upstream_cpu_pct": window.cpu_pct("upstream"),
        "load_cpu_pct": window.cpu_pct("load"),
        "others_cpu_pct": window.others_pct(),
        **{f"steal_{role}_pct": pct for role, pct in window.steal_pct().items()},
    }


def small_requests(ctx: Context) -> Scenario:
    plan = ctx.plan

    def case(path: str, concurrency: int) -> Case:
        async def run(target: Target, rep: int) -> Figures:
            meter = ctx.meter(target)
            result = await closed_loop(target, small_chat(target, path), concurrency, plan.closed_loop_seconds, meter)
            window, count = meter.result, len(result.latencies_ns)
            figures: Figures = {
                "requests": count,
                "errors": result.errors,
                "rps": count / window.seconds,
                "latency_p50_ms": _ms(percentile(result.latencies_ns, 50)),
                "latency_p99_ms": _ms(percentile(result.latencies_ns, 99)),
                **_load_side(window),
            }
            if target.name != DIRECT:
                figures["gateway_cpu_ms_per_request"] = window.cpu_ms[GATEWAY] / count if count else None
                figures["gateway_cpu_pct"] = window.cpu_pct(GATEWAY)
            return figures

        return Case(f"{path} c={concurrency}", {"path": path, "concurrency": concurrency}, run)

    paths = SMALL_PATHS
    runs = len(paths) * len(plan.concurrencies) * len(ctx.sides()) * plan.repeat
    return Scenario(
        "a",
        "small non-streamed chat requests, closed loop",
        [case(path, concurrency) for concurrency in plan.concurrencies for path in paths],
        {"rps": "ratio", "latency_p50_ms": "added", "latency_p99_ms": "added"},
        cap=runs * (plan.closed_loop_seconds + 10) + 30,
        gateway_figures=("gateway_cpu_ms_per_request", "gateway_cpu_pct"),
    )


def concurrent_streams(ctx: Context) -> Scenario:
    plan = ctx.plan
    stream_seconds = plan.stream_ramp + plan.stream_tokens * plan.token_interval

    def case(fmt: Format, count: int) -> Case:
        async def run(target: Target, rep: int) -> Figures:
            requests = [stream_chat(target, fmt, plan.stream_tokens, plan.token_interval) for _ in range(count)]
            meter = ctx.meter(target, watch=True)
            result = await streams(
                target, fmt, requests, plan.stream_tokens, plan.stream_ramp, meter, stream_seconds + 30
            )
            window = meter.result
            figures: Figures = {
                "streams": count,
                "chunks": result.chunks,
                "chunks_lost": result.lost,
                "out_of_order": result.out_of_order,
                "streams_refused": result.refused,
                "streams_cut": result.cut,
                "streams_unfinished": result.unfinished,
                "delay_p50_ms": _ms(percentile(result.delays_ns, 50)),
                "delay_p99_ms": _ms(percentile(result.delays_ns, 99)),
                "delay_max_ms": _ms(max(result.delays_ns, default=None)),
                "steady_delay_p99_ms": _ms(percentile(result.steady_delays_ns, 99)),
                "ttfb_p50_ms": _ms(percentile(result.ttfb_ns, 50)),
                "ttfb_p99_ms": _ms(percentile(result.ttfb_ns, 99)),
                **_load_side(window),
            }
            if target.name != DIRECT:
                chunks = result.chunks
                figures["gateway_cpu_ms_per_1k_chunks"] = window.cpu_ms[GATEWAY] * 1000 / chunks if chunks else None
                figures["gateway_cpu_pct"] = window.cpu_pct(GATEWAY)
                figures["gateway_rss_peak_mib"] = window.rss_peak_kb / 1024
                figures["gateway_rss_after_mib"] = await ctx.rss_after_mib(target.name)
                figures["gateway_kib_per_stream"] = (window.rss_peak_kb - window.rss_before_kb) / count
            return figures

        name = f"{count} x {fmt.value}"
        return Case(name, {"streams": count, "format": fmt.value, "tokens": plan.stream_tokens}, run)

    runs = 2 * len(plan.stream_counts) * len(ctx.sides()) * plan.repeat
    return Scenario(
        "b",
        f"concurrent streams of {plan.stream_tokens} tokens at {1 / plan.token_interval:g} tokens/s",
        [case(fmt, count) for count in plan.stream_counts for fmt in Format],
        {
            "delay_p50_ms": "added",
            "delay_p99_ms": "added",
            "delay_max_ms": "added",
            "steady_delay_p99_ms": "added",
            "ttfb_p50_ms": "added",
            "ttfb_p99_ms": "added",
        },
        cap=runs * (stream_seconds + 40) + 30,
        gateway_figures=("gateway_cpu_ms_per_1k_chunks", "gateway_kib_per_stream"),
    )


def blob_upload(ctx: Context) -> Scenario:
    size = ctx.plan.blob_bytes
    cap = 300.0

    async def run(target: Target, rep: int) -> Figures:
        meter = ctx.meter(target, watch=True)
        result = await upload(target, size, meter, cap)
        ok = result.error is None and result.status == 201
        window = meter.result
        figures: Figures = {
            "status": result.status,
            "seconds": result.seconds,
            "mib_per_s": size / MiB / result.seconds if ok and result.seconds else None,
            # Fresh pages faulted in per MiB moved: each costs microseconds of kernel time.
            "upstream_faults_per_mib": window.faults["upstream"] * MiB / size,
            **_load_side(window),
        }
        if target.name != DIRECT:
            figures["gateway_faults_per_mib"] = window.faults[GATEWAY] * MiB / size
            figures["gateway_rss_growth_mib"] = (window.rss_peak_kb - window.rss_before_kb) / 1024
            figures["gateway_rss_after_mib"] = await ctx.rss_after_mib(target.name)
            figures["gateway_cpu_pct"] = window.cpu_pct(GATEWAY)
        return figures

    name = f"{size / MiB:g} MiB" if size < 1 << 30 else f"{size / (1 << 30):g} GiB"
    return Scenario(
        "c",
        "blob upload (POST /api/blobs/<digest>, generated bytes)",
        [Case(name, {"bytes": size}, run)],
        {"mib_per_s": "ratio"},
        cap=len(ctx.sides()) * ctx.plan.repeat * cap + 30,
    )


def client_hang_ups(ctx: Context) -> Scenario:
    plan = ctx.plan
    cap = plan.hang_ups * 1.0 + 30

    async def run(target: Target, rep: int) -> Figures:
        async with ctx.meter(target) as meter:
            result = await hang_ups(target, ctx.upstreams, plan.hang_ups, f"{ctx.tag}-{target.name}-{rep}", 0.1, cap)
        return {
            "hang_ups": result.attempted,
            "unseen": result.unseen,
            "close_p50_ms": _ms(percentile(result.delays_ns, 50)),
            "close_p99_ms": _ms(percentile(result.delays_ns, 99)),
            "close_max_ms": _ms(max(result.delays_ns, default=None)),
            **_load_side(meter.result),
        }

    return Scenario(
        "d",
        "client hang-up after the first chunk: until the upstream sees its connection close",
        [Case(f"{plan.hang_ups} hang-ups", {"hang_ups": plan.hang_ups}, run)],
        {"close_p50_ms": "added", "close_p99_ms": "added"},
        cap=len(ctx.sides()) * plan.repeat * cap + 30,
    )


def parse_stall(ctx: Context) -> Scenario:
    plan = ctx.plan
    cap = 180.0

    def case(name: str, attack: Attack, params: dict[str, object]) -> Case:
        async def run(target: Target, rep: int) -> Figures:
            meter = ctx.meter(target, watch=True)
            result = await stall(target, attack, meter, cap)
            window = meter.result
            figures: Figures = {
                "stream_stall_ms": _ms(result.stream_delay_max_ns),
                "healthz_max_ms": _ms(result.healthz_max_ns),
                "stream_chunks": result.stream_chunks,
                "healthz_polls": result.healthz_polls,
                "attack_status": result.attack_status,
                "attack_s": result.attack_ns / 1e9,
                "body_mib": len(attack.body) / MiB,
                **_load_side(window),
            }
            if target.name != DIRECT:
                figures["gateway_cpu_ms"] = window.cpu_ms[GATEWAY]
                figures["gateway_rss_growth_mib"] = (window.rss_peak_kb - window.rss_before_kb) / 1024
            if result.error is not None:
                raise RuntimeError(f"{name}: {result.error}")
            return figures

        return Case(name, params, run)

    cases = [
        case(f"{count:,} members, {path}", many_members(count, openai=openai), {"members": count, "path": path})
        for count in plan.stall_members
        for openai, path in ((False, "/api/chat"), (True, "/v1/chat/completions stream"))
        if not openai or count == plan.stall_members[0]
    ]
    image = plan.stall_image_bytes
    cases.append(case(f"{image / MiB:g} MiB image, /api/chat", large_image(image), {"image_bytes": image}))
    return Scenario(
        "e",
        "one large JSON body: the largest stall of a 50 ms stream and of /healthz beside it",
        cases,
        {"stream_stall_ms": "added", "healthz_max_ms": "added"},
        cap=len(cases) * len(ctx.sides()) * plan.repeat * (cap + 5) + 30,
        gateway_figures=("gateway_cpu_ms",),
    )


BUILDERS: dict[str, Callable[[Context], Scenario]] = {
    "a": small_requests,
    "b": concurrent_streams,
    "c": blob_upload,
    "d": client_hang_ups,
    "e": parse_stall,
}


def order(sides: list[str], rep: int) -> list[str]:
    """Direct first, then the gateway sides, turned by one place each repetition."""
    direct, gateways = sides[0], sides[1:]
    turn = rep % len(gateways) if gateways else 0
    return [direct, *gateways[turn:], *gateways[:turn]]


async def run_scenario(ctx: Context, scenario: Scenario, outcome: Outcome) -> None:
    """Fill ``outcome`` run by run, so that whatever stops the scenario leaves what was measured."""
    budget = asyncio.timeout(scenario.cap)
    try:
        async with budget:
            for rep in range(ctx.plan.repeat):
                for case in scenario.cases:
                    for name in order(ctx.sides(), rep):
                        target = await ctx.ready(name)
                        outcome.runs[case.name][name].append(await case.run(target, rep))
                        await asyncio.sleep(ctx.plan.settle)
    except TimeoutError:
        cause = f"its {scenario.cap:.0f} s cap" if budget.expired() else "a bounded wait inside a run"
        outcome.error = f"stopped by {cause}"
    except (OSError, RuntimeError) as error:
        outcome.error = f"{type(error).__name__}: {error}"
    outcome.finished = True
