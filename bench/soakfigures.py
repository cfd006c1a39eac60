"""What a finished soak measured, as the report's figures, its timeline and its RSS samples.

RSS "after the first minute" is the first sample at or after ``rss_baseline`` seconds (at most
half the window, so that a short soak still compares two points); RSS "at the end" is the sample
taken as the window closed, still under full load, like the first one. The slope is a least-squares
fit over the samples from the first minute on: a leak shows as a steady slope, noise as none.
"""

from __future__ import annotations

from array import array
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from bench.meter import Window
from bench.plan import SoakPlan
from bench.stats import percentile

if TYPE_CHECKING:
    from bench.soak import Sample, Soak


def _ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


def _mib(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


def title(plan: SoakPlan) -> str:
    return (
        f"soak: {plan.streams} streams open for {plan.minutes:g} min, NDJSON and SSE, "
        f"with upstream cuts and client hang-ups, and small non-streamed requests"
    )


def empty(plan: SoakPlan, error: str | None) -> dict[str, Any]:
    """The report of a soak that never started."""
    params = {**asdict(plan), "window_s": 0.0}
    return {"title": title(plan), "params": params, "error": error, "figures": {}, "timeline": [], "rss_samples": []}


def _slope_mib_per_min(samples: list[Sample]) -> float | None:
    if len(samples) < 2:
        return None
    xs = [sample.at / 60 for sample in samples]
    ys = [sample.rss_kb / 1024 for sample in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if not spread:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def _memory(soak: Soak, window: Window, rss_after_mib: float) -> dict[str, float | None]:
    samples = soak.samples
    baseline_at = min(soak.plan.rss_baseline, soak.seconds / 2)
    baseline = next((sample for sample in samples if sample.at >= baseline_at), None)
    end = samples[-1] if samples else None
    ratio = None
    if baseline is not None and end is not None and baseline.rss_kb:
        ratio = end.rss_kb / baseline.rss_kb
    steady = [sample for sample in samples if baseline is not None and sample.at >= baseline.at]
    return {
        "gateway_rss_start_mib": _mib(samples[0].rss_kb) if samples else None,
        "gateway_rss_baseline_mib": _mib(baseline.rss_kb) if baseline else None,
        "gateway_rss_baseline_at_s": baseline.at if baseline else None,
        "gateway_rss_end_mib": _mib(end.rss_kb) if end else None,
        "gateway_rss_end_at_s": end.at if end else None,
        "gateway_rss_end_ratio": ratio,
        "gateway_rss_slope_mib_per_min": _slope_mib_per_min(steady),
        "gateway_rss_peak_mib": window.rss_peak_kb / 1024,
        "gateway_rss_after_mib": rss_after_mib,
    }


def _timeline(soak: Soak) -> list[dict[str, float | None]]:
    """One row per bucket: chunks by their send time, streams by their end time, RSS and CPU
    from the samples (rows after the window, while the last streams drain, have none)."""
    size, samples, rows = soak.plan.bucket, soak.samples, []
    for index, bucket in enumerate(soak.buckets):
        low, high = index * size, (index + 1) * size
        before = [sample for sample in samples if sample.at <= low] or samples[:1]
        inside = [sample for sample in samples if sample.at <= high]
        rss = cpu = None
        if before and inside and inside[-1].at > max(before[-1].at, low):
            first, last = before[-1], inside[-1]
            rss = last.rss_kb / 1024
            cpu = 100 * (last.cpu_ms - first.cpu_ms) / ((last.at - first.at) * 1000)
        delays = bucket.delays_ns
        rows.append(
            {
                "from_s": low,
                "to_s": min(high, soak.drained_at),
                "streams_ended": bucket.streams,
                "chunks": len(delays),
                "delay_p50_ms": _ms(percentile(delays, 50)),
                "delay_p99_ms": _ms(percentile(delays, 99)),
                "delay_max_ms": _ms(max(delays, default=None)),
                "gateway_rss_mib": rss,
                "gateway_cpu_pct": cpu,
            }
        )
    return rows


def figures(soak: Soak, window: Window, rss_after_mib: float, error: str | None) -> dict[str, Any]:
    tally, small, plan = soak.tally, soak.small, soak.plan
    delays: array[int] = array("q")
    for bucket in soak.buckets:
        delays.extend(bucket.delays_ns)
    close_ns = [soak.closes[tag] - ns for tag, ns in soak.hung_up.items() if tag in soak.closes]
    loaded = [sample.open_streams for sample in soak.samples if plan.ramp < sample.at < soak.seconds]
    cut = tally.ended["cut_fin"] + tally.ended["cut_rst"]
    small_ok = small.statuses.get("200", 0)
    values: dict[str, float | None] = {
        "seconds": soak.seconds,
        "drained_s": soak.drained_at,
        "streams_started": soak.started,
        "streams_open_min": min(loaded, default=None),
        "streams_open_mean": sum(loaded) / len(loaded) if loaded else None,
        **{f"streams_{kind}": count for kind, count in tally.ended.items()},
        "streams_completed": tally.completed,
        "streams_without_end": tally.without_end,
        "streams_not_terminated": tally.not_terminated,
        "streams_failed": tally.failed,
        "cut_streams": cut,
        "cut_with_error_line": tally.cut_error_line,
        "cut_without_error_line": tally.cut_without_error_line,
        "cut_terminated": tally.cut_terminated,
        "cut_not_terminated": tally.cut_not_terminated,
        "stray_error_lines": tally.stray_error_lines,
        "hang_ups": tally.hung_up,
        "hang_ups_unseen": len(soak.hung_up) - len(close_ns),
        "hang_up_missed": tally.hang_up_missed,
        "close_p50_ms": _ms(percentile(close_ns, 50)),
        "close_p99_ms": _ms(percentile(close_ns, 99)),
        "close_max_ms": _ms(max(close_ns, default=None)),
        "upstream_closes_unexpected": len(soak.closes.keys() - soak.hung_up.keys()),
        "chunks": tally.chunks,
        "chunks_lost": tally.lost,
        "out_of_order": tally.out_of_order,
        "chunks_duplicated": tally.duplicated,
        "delay_p50_ms": _ms(percentile(delays, 50)),
        "delay_p99_ms": _ms(percentile(delays, 99)),
        "delay_max_ms": _ms(max(delays, default=None)),
        "streams_refused": tally.refused,
        "streams_broken": tally.broken,
        "streams_stalled": tally.stalled,
        "connect_failures": tally.connect_failures,
        "small_requests": sum(small.statuses.values()) + small.errors,
        "small_ok": small_ok,
        "small_failed": sum(small.statuses.values()) - small_ok + small.errors,
        "small_latency_p50_ms": _ms(percentile(small.latencies_ns, 50)),
        "small_latency_p99_ms": _ms(percentile(small.latencies_ns, 99)),
        "gateway_cpu_pct": window.cpu_pct("gateway"),
        "upstream_cpu_pct": window.cpu_pct("upstream"),
        "load_cpu_pct": window.cpu_pct("load"),
        "others_cpu_pct": window.others_pct(),
        **{f"steal_{role}_pct": pct for role, pct in window.steal_pct().items()},
        **_memory(soak, window, rss_after_mib),
    }
    return {
        "title": title(plan),
        "params": {**asdict(plan), "window_s": soak.seconds},
        "error": error,
        "figures": values,
        "stream_statuses": dict(sorted(tally.statuses.items())),
        "small_statuses": dict(sorted(small.statuses.items())),
        "timeline": _timeline(soak),
        "rss_samples": [[round(sample.at, 2), round(sample.rss_kb / 1024, 2)] for sample in soak.samples],
    }
