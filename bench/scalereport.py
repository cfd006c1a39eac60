"""The scale scenario's report: each figure's median and range over the repetitions, and its
ratio to the smallest size (and, for latencies, what the gateway adds to a direct connection), as JSON and as one
Markdown table that can be pasted as it is.

A ratio is the ratio of the medians; its range is that of the per-repetition ratios (each size's
figure against the smallest size's in the same repetition), so a regression shows as a ratio
that grew, whatever the machine's speed that day.

Pure: it measures nothing and starts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.stats import spread

DASH = "\u2013"
TIMES = "\u00d7"
THINGS = {
    "keys": "keys in the store",
    "models": "models listed by the upstream",
    "usage": "usage rows",
    "upstreams": "upstreams behind the gateway",
    "streams": "concurrent streams",
}
# Per group: (figure, label, compared with "size" (a ratio to the smallest) and/or "direct" (the
# difference from the same requests sent straight to the fast upstream)).
ROWS: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "keys": (
        ("refresh_cpu_ms_per_change", "gateway CPU per key change, as the keyring refreshes (ms)", ("size",)),
        ("refresh_changes", "key changes measured", ()),
        ("create_cpu_ms", "CPU of `KeyAdmin.create`, one key (ms)", ("size",)),
        (
            "requests_latency_p99_ms",
            "other requests' latency p99 while keys change once a second (ms)",
            ("size", "direct"),
        ),
        (
            "requests_latency_max_ms",
            "other requests' worst latency while keys change once a second (ms)",
            ("size", "direct"),
        ),
        ("requests_failed", "other requests failed", ()),
        ("keys_page_cpu_ms", "gateway CPU per page of the admin keys table, 50 keys (ms)", ("size",)),
        ("keys_page_stall_ms", "largest stall of a 50 ms stream while that page loads (ms)", ("size",)),
        ("keys_search_cpu_ms", "gateway CPU per search of the admin keys table (ms)", ("size",)),
        ("keys_search_stall_ms", "largest stall of a 50 ms stream while a search loads (ms)", ("size",)),
        ("rss_mib", "gateway RSS, idle after warm-up (MiB)", ("size",)),
    ),
    "models": (
        ("tags_cpu_ms", "gateway CPU per `/api/tags`, unrestricted key (ms)", ("size",)),
        ("globs_tags_cpu_ms", "gateway CPU per `/api/tags`, key with five globs (ms)", ("size",)),
        ("tags_latency_p50_ms", "`/api/tags` latency p50, unrestricted key (ms)", ("size", "direct")),
        ("tags_failed", "`/api/tags` requests failed", ()),
    ),
    "usage": (
        ("usage_cpu_ms", "gateway CPU per `/admin/api/usage` (ms)", ("size",)),
        ("usage_wall_ms", "`/admin/api/usage` wall time (ms)", ("size",)),
        ("usage_stall_ms", "largest stall of a 50 ms stream while `/admin/api/usage` loads (ms)", ("size",)),
        ("daily_cpu_ms", "gateway CPU per `/admin/api/usage/daily` (ms)", ("size",)),
        ("daily_wall_ms", "`/admin/api/usage/daily` wall time (ms)", ("size",)),
        ("daily_stall_ms", "largest stall of a 50 ms stream while `/admin/api/usage/daily` loads (ms)", ("size",)),
    ),
    "upstreams": (
        ("request_cpu_ms", "gateway CPU per small `/api/chat` request (ms)", ("size",)),
        ("request_failed", "requests failed", ()),
    ),
    "streams": (
        ("ndjson_cpu_ms_per_1k_chunks", "gateway CPU per 1000 relayed chunks, NDJSON (ms)", ("size",)),
        ("sse_cpu_ms_per_1k_chunks", "gateway CPU per 1000 relayed chunks, SSE (ms)", ("size",)),
        ("ndjson_chunks_lost", "chunks lost, NDJSON", ()),
        ("sse_chunks_lost", "chunks lost, SSE", ()),
    ),
}
# Below this a figure is within the noise of how it is measured, and ratios are taken to this
# instead: a key refresh at 10 keys costs less than the idle gateway's own CPU varies over the
# window (a few tenths of a ms per change).
NOISE_FLOOR = {"refresh_cpu_ms_per_change": 0.5}
Runs = Mapping[tuple[str, int, str], Sequence[Mapping[str, float | None]]]


def _compare(
    values: Sequence[float | None], bases: Sequence[float | None], ratio: bool, floor: float = 0.0
) -> dict[str, Any] | None:
    """``values`` over ``bases`` (a ratio, or a difference): of the medians, and the range of the
    per-repetition comparisons; a ratio is to ``floor`` where the base is below it."""
    top, bottom = spread(values), spread(bases)
    if top is None or bottom is None or (ratio and max(bottom.median, floor) <= 0):
        return None

    def one(value: float | None, base: float | None) -> float | None:
        if value is None or base is None or (ratio and max(base, floor) <= 0):
            return None
        return value / max(base, floor) if ratio else value - base

    per_rep = spread([one(value, base) for value, base in zip(values, bases, strict=False)])
    if per_rep is None:
        return None
    headline = top.median / max(bottom.median, floor) if ratio else top.median - bottom.median
    return {"of_medians": headline, "min": per_rep.low, "max": per_rep.high}


def figures(runs: Runs) -> list[dict[str, Any]]:
    """One entry per (group, size, figure), in the table's order."""
    entries: list[dict[str, Any]] = []
    for group, rows in ROWS.items():
        sizes = sorted({size for (name, size, side) in runs if name == group and side == "gateway"})
        if not sizes:
            continue
        smallest = sizes[0]
        for size in sizes:
            # Measured once per repetition (keys), or for each size's own upstream (models).
            direct = runs.get((group, size, "direct")) or runs.get((group, smallest, "direct"), [])
            reps = runs[(group, size, "gateway")]
            base = runs[(group, smallest, "gateway")]
            for figure, label, against in rows:
                values = [rep.get(figure) for rep in reps]
                measured = spread(values)
                entry: dict[str, Any] = {
                    "group": group,
                    "size": size,
                    "figure": figure,
                    "label": label,
                    "value": None if measured is None else measured.as_json(),
                }
                if "size" in against:
                    entry["vs_smallest"] = _compare(
                        values, [rep.get(figure) for rep in base], ratio=True, floor=NOISE_FLOOR.get(figure, 0.0)
                    )
                if "direct" in against and direct:
                    entry["over_direct"] = _compare(values, [rep.get(figure) for rep in direct], ratio=False)
                    entry["direct"] = _value(spread([rep.get(figure) for rep in direct]))
                entries.append(entry)
    return entries


def _value(measured: Any) -> dict[str, object] | None:
    return None if measured is None else measured.as_json()


def _number(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _cell(value: Mapping[str, Any] | None) -> str:
    if value is None:
        return "n/a"
    if value["min"] == value["max"]:
        return _number(value["median"])
    return f"{_number(value['median'])} ({_number(value['min'])}{DASH}{_number(value['max'])})"


def _versus(compared: Mapping[str, Any] | None, form: str) -> str:
    """A ratio (``form`` TIMES) or a difference in ms ("+"), with the range of the repetitions'."""
    if compared is None:
        return ""

    def number(value: float) -> str:
        if form != TIMES:
            return f"{value:+.2f}"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"

    low, high = compared["min"], compared["max"]
    spread_text = "" if low == high else f" ({number(low)}{DASH}{number(high)})"
    return f"{form if form == TIMES else ''}{number(compared['of_medians'])}{spread_text}"


def table(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The Markdown table: one row per size and figure."""
    lines = [
        "| what grows | size | figure | median (min\u2013max) | \u00d7 smallest size | direct | added over direct |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for entry in entries:
        direct = entry.get("direct")
        lines.append(
            f"| {THINGS[entry['group']]} | {entry['size']:,} | {entry['label']} | {_cell(entry['value'])} "
            f"| {_versus(entry.get('vs_smallest'), TIMES)} | {_cell(direct) if direct else ''} "
            f"| {_versus(entry.get('over_direct'), '+')} |"
        )
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"# ollama-gateway scale benchmark, {meta['started']}",
        "",
        f"- command: `{meta['command']}`",
        f"- gateway: {meta['gateway_version']}, source sha256 {meta['source_sha256']} (gateway/**/*.py)",
        f"- machine: {meta['cpus']} CPUs, load average (1, 5, 15 min) {meta['load_before']} before, "
        f"{meta['load_after']} after; {meta['duration_s']:.0f} s",
        f"- pinning: {meta['pinning']}",
        f"- repetitions: {meta['repeat']}, every size in turn in each; each figure is the median (min{DASH}max) "
        "across repetitions; a ratio is of the medians, its range that of the per-repetition ratios",
        *(f"- {note}" for note in meta["notes"]),
        "",
        *table(report["figures"]),
        "",
    ]
    floors = ", ".join(f"{figure} {floor:g} ms" for figure, floor in NOISE_FLOOR.items())
    lines += [f"Ratios are taken to no less than the measurement's noise ({floors}).", ""]
    if report["error"]:
        lines += [f"**Incomplete:** {report['error']}", ""]
    return "\n".join(lines)
