"""The soak's goals and its Markdown section."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}

# (goal, figure, op, limit): checked on the soak's totals.
GOALS = (
    ("soak: no lost chunks", "chunks_lost", "<=", 0),
    ("soak: no reordered chunks", "out_of_order", "<=", 0),
    ("soak: no duplicated chunks", "chunks_duplicated", "<=", 0),
    ("soak: every cut stream ends with its error line", "cut_without_error_line", "<=", 0),
    ("soak: every cut stream's response is terminated", "cut_not_terminated", "<=", 0),
    ("soak: every stream ends as its kind must", "streams_failed", "<=", 0),
    ("soak: every hang-up reaches the upstream", "hang_ups_unseen", "<=", 0),
    ("soak: every non-streamed request answered 200", "small_failed", "<=", 0),
    ("soak: gateway RSS at the end <= 1.10 x after the first minute", "gateway_rss_end_ratio", "<=", 1.10),
)

LABELS = {
    "seconds": "window (s): streams start until its end",
    "drained_s": "... until the last stream ended (s)",
    "streams_started": "streams started",
    "streams_open_min": "streams open, lowest sample after the ramp",
    "streams_open_mean": "streams open, mean of the samples after the ramp",
    "streams_normal": "streams run to their end",
    "streams_cut_fin": "streams cut by the upstream (FIN)",
    "streams_cut_rst": "streams cut by the upstream (RST)",
    "streams_hang_up": "streams the client hung up on",
    "streams_completed": "normal streams complete (every token, final record, terminated)",
    "streams_without_end": "streams without their final record (done / [DONE])",
    "streams_not_terminated": "normal streams not terminated (no zero-length chunk)",
    "streams_failed": "streams that did not end as their kind must",
    "cut_streams": "cut streams",
    "cut_with_error_line": "cut streams ending with their error line",
    "cut_without_error_line": "cut streams without their error line",
    "cut_terminated": "cut streams terminated (zero-length chunk)",
    "cut_not_terminated": "cut streams not terminated",
    "stray_error_lines": "streams nobody cut with an error record",
    "hang_ups": "client hang-ups",
    "hang_ups_unseen": "hang-ups the upstream never saw",
    "hang_up_missed": "hang-up streams that ended before the hang-up",
    "close_p50_ms": "hang-up reaches upstream p50 (ms)",
    "close_p99_ms": "hang-up reaches upstream p99 (ms)",
    "close_max_ms": "hang-up reaches upstream max (ms)",
    "upstream_closes_unexpected": "mid-stream closes at the upstream nobody hung up",
    "chunks": "token chunks relayed",
    "chunks_lost": "chunks lost",
    "out_of_order": "chunks out of order",
    "chunks_duplicated": "chunks duplicated",
    "delay_p50_ms": "per-chunk delay p50 (ms)",
    "delay_p99_ms": "per-chunk delay p99 (ms)",
    "delay_max_ms": "per-chunk delay max (ms)",
    "streams_refused": "streams refused (status not 200)",
    "streams_broken": "streams whose client connection broke",
    "streams_stalled": "streams stalled (no end in time)",
    "connect_failures": "connections that could not be opened",
    "small_requests": "non-streamed requests",
    "small_ok": "non-streamed requests answered 200",
    "small_failed": "non-streamed requests failed (other status, broken, no answer)",
    "small_latency_p50_ms": "non-streamed latency p50 (ms)",
    "small_latency_p99_ms": "non-streamed latency p99 (ms)",
    "gateway_cpu_pct": "gateway CPU (% of one core)",
    "upstream_cpu_pct": "fast upstream CPU (% of one core)",
    "load_cpu_pct": "load generator CPU (% of one core)",
    "others_cpu_pct": "rest of the machine, CPU (% of one core)",
    "steal_gateway_pct": "steal on the gateway's CPU (% of its time)",
    "steal_load_pct": "steal on the load side's CPU (% of its time)",
    "steal_machine_pct": "steal, all CPUs (% of one core)",
    "gateway_rss_start_mib": "gateway RSS as the window opened (MiB)",
    "gateway_rss_baseline_mib": "gateway RSS after the first minute (MiB)",
    "gateway_rss_baseline_at_s": "... sampled at (s)",
    "gateway_rss_end_mib": "gateway RSS at the end, under load (MiB)",
    "gateway_rss_end_at_s": "... sampled at (s)",
    "gateway_rss_end_ratio": "gateway RSS end / after the first minute",
    "gateway_rss_slope_mib_per_min": "gateway RSS slope from the first minute on (MiB/min)",
    "gateway_rss_peak_mib": "gateway RSS peak (MiB)",
    "gateway_rss_after_mib": "gateway RSS after the run, connections closed (MiB)",
}


def _steal(figures: dict[str, Any]) -> float | None:
    values = [value for name, value in figures.items() if name.startswith("steal_") and value is not None]
    return max(values, default=None)


def goals(soak: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal, in the shape of the scenarios' goal rows; a missing figure fails."""
    figures = soak["figures"]
    rows = []
    for text, figure, op, limit in GOALS:
        value = figures.get(figure)
        met = value is not None and _OPS[op](value, limit)
        case = f"{soak['params']['streams']} streams, {soak['params']['window_s'] / 60:.2f} min"
        rows.append(
            {"goal": text, "case": case, "value": value, "stat": "total", "met": met, "steal_max_pct": _steal(figures)}
        )
    return rows


def incomplete(soak: dict[str, Any]) -> str | None:
    """Why the soak's figures are not the whole planned run, if they are not."""
    if soak["error"]:
        return str(soak["error"])
    if not soak["figures"].get("streams_started"):
        return "no stream started"
    return None


def _cell(value: object, number: Callable[[float], str]) -> str:
    if value is None:
        return ""
    return number(value) if isinstance(value, int | float) else str(value)


def markdown(soak: dict[str, Any], number: Callable[[float], str]) -> list[str]:
    lines = ["", f"## (soak) {soak['title']}", ""]
    why = incomplete(soak)
    if why:
        lines += [f"**Incomplete: {why}**", ""]
    params = soak["params"]
    lines += [
        f"Each stream: {params['tokens'][0]} to {params['tokens'][1]} tokens, one every "
        f"{params['token_interval'] * 1000:g} ms, NDJSON or SSE; cut by the upstream after a random token: "
        f"{params['cut_fin']:.0%} with FIN, {params['cut_rst']:.0%} with RST; hung up on by the client: "
        f"{params['hang_up']:.0%}; on a new connection although the last one was reusable: "
        f"{params['fresh_connection']:.0%}. Beside them: {params['small_clients']} connections of small "
        f"non-streamed requests, {params['small_pause'] * 1000:g} ms apart. Seed {params['seed']}.",
        "",
        "| figure | gateway |",
        "|---|---:|",
    ]
    for name, value in soak["figures"].items():
        lines.append(f"| {LABELS.get(name, name)} | {_cell(value, number)} |")
    statuses = ", ".join(f"{status}: {count}" for status, count in soak.get("stream_statuses", {}).items())
    small = ", ".join(f"{status}: {count}" for status, count in soak.get("small_statuses", {}).items())
    lines += ["", f"Stream statuses: {statuses or 'none'}. Non-streamed statuses: {small or 'none'}."]
    if soak["timeline"]:
        lines += [
            "",
            "| from (s) | to (s) | streams ended | chunks | delay p50 / p99 / max (ms) | gateway RSS (MiB) | "
            "gateway CPU (%) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in soak["timeline"]:
            delays = " / ".join(_cell(row[name], number) for name in ("delay_p50_ms", "delay_p99_ms", "delay_max_ms"))
            cells = [
                _cell(row["from_s"], number),
                _cell(row["to_s"], number),
                _cell(row["streams_ended"], number),
                _cell(row["chunks"], number),
                delays,
                _cell(row["gateway_rss_mib"], number),
                _cell(row["gateway_cpu_pct"], number),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines
