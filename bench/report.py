"""The report: medians with min-max over repetitions, gateway vs direct, as JSON and Markdown."""

from __future__ import annotations

from typing import Any

from bench import soakreport
from bench.goals import check
from bench.scenarios import Figures, Outcome, Scenario
from bench.stats import Spread, spread
from bench.versus import versus

DASH = "\u2013"

LABELS = {
    "requests": "requests measured",
    "errors": "errors",
    "rps": "throughput (req/s)",
    "latency_p50_ms": "latency p50 (ms)",
    "latency_p99_ms": "latency p99 (ms)",
    "gateway_cpu_ms_per_request": "gateway CPU per request (ms)",
    "streams": "concurrent streams",
    "chunks": "token chunks received",
    "chunks_lost": "chunks lost",
    "out_of_order": "chunks out of order",
    "streams_refused": "streams refused (status not 200)",
    "streams_cut": "streams cut short",
    "streams_unfinished": "streams unfinished at the time cap",
    "delay_p50_ms": "per-chunk delay p50 (ms)",
    "delay_p99_ms": "per-chunk delay p99 (ms)",
    "delay_max_ms": "per-chunk delay max (ms)",
    "steady_delay_p99_ms": "per-chunk delay p99, once all streams started (ms)",
    "ttfb_p50_ms": "time to first token p50 (ms)",
    "ttfb_p99_ms": "time to first token p99 (ms)",
    "gateway_cpu_ms_per_1k_chunks": "gateway CPU per 1000 chunks (ms)",
    "gateway_rss_peak_mib": "gateway RSS peak (MiB)",
    "gateway_rss_after_mib": "gateway RSS after the run, connections closed (MiB)",
    "gateway_kib_per_stream": "gateway RSS growth per open stream (KiB)",
    "status": "HTTP status",
    "seconds": "upload time (s)",
    "mib_per_s": "throughput (MiB/s)",
    "gateway_rss_growth_mib": "gateway RSS growth (MiB)",
    "gateway_faults_per_mib": "gateway minor page faults per MiB",
    "upstream_faults_per_mib": "fast upstream minor page faults per MiB",
    "hang_ups": "hang-ups",
    "unseen": "hang-ups the upstream never saw",
    "close_p50_ms": "close reaches upstream p50 (ms)",
    "close_p99_ms": "close reaches upstream p99 (ms)",
    "close_max_ms": "close reaches upstream max (ms)",
    "stream_stall_ms": "largest stall of a 50 ms stream (ms)",
    "healthz_max_ms": "slowest /healthz answer (ms)",
    "stream_chunks": "stream tokens sent meanwhile",
    "healthz_polls": "/healthz answers meanwhile",
    "attack_status": "large body: HTTP status",
    "attack_s": "large body: sent to answered (s)",
    "body_mib": "large body: size (MiB)",
    "gateway_cpu_ms": "gateway CPU, main process (ms)",
    "gateway_cpu_pct": "gateway CPU (% of one core)",
    "upstream_cpu_pct": "fast upstream CPU (% of one core)",
    "load_cpu_pct": "load generator CPU (% of one core)",
    "others_cpu_pct": "rest of the machine, CPU (% of one core)",
    "steal_load_pct": "steal on the load side's CPU (% of its time)",
    "steal_gateway_pct": "steal on the gateway's CPU (% of its time)",
    "steal_machine_pct": "steal, all CPUs (% of one core)",
}


def _compare(direct: float | None, gateway: float | None, kind: str) -> float | None:
    if direct is None or gateway is None:
        return None
    if kind == "added":
        return gateway - direct
    return gateway / direct if direct else None


def _spreads(runs: list[dict[str, float | None]]) -> dict[str, Any]:
    names = list(dict.fromkeys(name for run in runs for name in run))
    return {name: _json(spread([run.get(name) for run in runs])) for name in names}


def _json(value: Spread | None) -> dict[str, object] | None:
    return None if value is None else value.as_json()


def _vs_direct(scenario: Scenario, direct: list[Figures], gateway: list[Figures]) -> dict[str, Any]:
    # Compared per repetition: each gateway run against the direct run of the same repetition.
    pairs = list(zip(direct, gateway, strict=False))
    return {
        f"{name}_{kind}": _json(spread([_compare(d.get(name), g.get(name), kind) for d, g in pairs]))
        for name, kind in scenario.compare.items()
    }


def scenario_report(scenario: Scenario, outcome: Outcome) -> dict[str, Any]:
    cases = []
    for case in scenario.cases:
        runs = outcome.runs.get(case.name, {})
        direct, gateway = runs.get("direct", []), runs.get("gateway", [])
        entry: dict[str, Any] = {
            "case": case.name,
            "params": case.params,
            "direct": _spreads(direct),
            "gateway": _spreads(gateway),
            "vs_direct": _vs_direct(scenario, direct, gateway),
        }
        # Further gateway sides (--upstreams 1,3): each against direct, and against "gateway".
        others = [name for name in runs if name not in ("direct", "gateway")]
        if others:
            entry["sides"] = {
                name: {
                    "gateway": _spreads(runs[name]),
                    "vs_direct": _vs_direct(scenario, direct, runs[name]),
                    "vs_gateway": versus(scenario.compare, scenario.gateway_figures, direct, gateway, runs[name]),
                }
                for name in others
            }
        cases.append(entry)
    return {
        "title": scenario.title,
        "compare": scenario.compare,
        "gateway_figures": list(scenario.gateway_figures),
        "cases": cases,
        "error": outcome.error,
    }


def build(
    meta: dict[str, Any], scenarios: list[Scenario], outcomes: list[Outcome], soak: dict[str, Any] | None = None
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "meta": meta,
        "scenarios": {s.key: scenario_report(s, o) for s, o in zip(scenarios, outcomes, strict=True)},
    }
    report["goals"] = check(report)
    if soak is not None:
        report["soak"] = soak
        report["goals"] += soakreport.goals(soak)
    return report


def _number(value: float) -> str:
    size = abs(value)
    if size >= 100 or value == int(value):
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _triple(values: list[float]) -> str:
    return " / ".join(f"{value:.2f}" for value in values)


def _cell(value: dict[str, Any] | None, prefix: str = "") -> str:
    if value is None:
        return ""
    text = prefix + _number(value["median"])
    if len(value["runs"]) > 1:
        text += f" ({_number(value['min'])}{DASH}{_number(value['max'])})"
    return text


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"# ollama-gateway benchmark, {meta['started']}",
        "",
        f"- command: `{meta['command']}`",
        f"- gateway: {meta['gateway']['version']}, source sha256 {meta['gateway']['source_sha256']} (gateway/**/*.py)"
        + (f", run from {meta['gateway']['package']}" if "package" in meta["gateway"] else ""),
        f"- machine: {meta['cpus']} CPUs ({meta['cpu_model']}), Linux {meta['kernel']}, Python {meta['python']}",
        f"- pinning: {meta['pinning']}",
        "- machine load average (1, 5, 15 min): "
        f"{_triple(meta['load_average']['before'])} before, {_triple(meta['load_average']['after'])} after",
        "- hypervisor steal over the whole run (% of each CPU's time): "
        + ", ".join(f"CPU {line.removeprefix('cpu')} {pct:.1f}" for line, pct in meta["steal_pct"].items()),
        *(
            []
            if "soak" in report
            else [
                f"- repetitions: {meta['repeat']}, interleaved (direct, then "
                f"{'each gateway side' if len(meta.get('sides', [])) > 1 else 'gateway'}); "
                f"each figure is the median, (min{DASH}max) across repetitions"
            ]
        ),
        *_upstreams(meta),
        f"- gateway RSS: {meta['gateway_rss_start_mib']:.1f} MiB after start, "
        f"{meta['gateway_rss_idle_mib']:.1f} MiB idle after warm-up",
        "- features on in the gateway:",
        *(f"  - {feature}" for feature in meta["features"]),
    ]
    sides = meta.get("sides", [])
    for key, scenario in report["scenarios"].items():
        lines += ["", f"## ({key}) {scenario['title']}", ""]
        if scenario["error"]:
            lines += [f"**Incomplete: {scenario['error']}**", ""]
        lines += _table(scenario, sides)
    if "soak" in report:
        lines += soakreport.markdown(report["soak"], _number)
    if report["goals"]:
        lines += [
            "",
            "## Goals (one core for the gateway)",
            "",
            "| goal | case | measured | met | highest steal in its runs (%) |",
            "|---|---|---:|---|---:|",
        ]
        for goal in report["goals"]:
            measured = "none" if goal["value"] is None else _number(goal["value"])
            measured += " (worst run)" if goal["stat"] == "max" else ""
            measured += " (ratio of medians)" if goal["stat"] == "of_medians" else ""
            steal = "" if goal["steal_max_pct"] is None else _number(goal["steal_max_pct"])
            met = "yes" if goal["met"] else "**no**"
            lines.append(f"| {goal['goal']} | {goal['case']} | {measured} | {met} | {steal} |")
    return "\n".join(lines) + "\n"


def _upstreams(meta: dict[str, Any]) -> list[str]:
    sides = meta.get("sides", [])
    if [side.get("upstreams") for side in sides] in ([], [1]):
        return []
    lines = ["- gateway sides (direct: one fast upstream; every side pinned alike; order turning each repetition):"]
    for side in sides:
        setting = side["settings"].get("GATEWAY_UPSTREAMS") or side["settings"].get("GATEWAY_UPSTREAM_URL")
        lines.append(
            f"  - `{side['side']}`: {_count(side['upstreams'])} ({setting}), "
            f"RSS {side['rss_idle_mib']:.1f} MiB idle after warm-up, {side['starts']} start(s)"
        )
    return lines


def _count(upstreams: int) -> str:
    return f"{upstreams} upstream{'' if upstreams == 1 else 's'}"


def _versus_cell(versus: dict[str, Any] | None, kind: str | None, name: str) -> str:
    versus = versus or {}
    ratio = versus.get(f"{name}_added_ratio" if kind == "added" else f"{name}_ratio")
    diff = versus.get(f"{name}_added_diff") if kind == "added" else None
    if ratio is None:
        return ""
    text = f"x{_number(ratio['of_medians'])}"
    if len(ratio["runs"]) > 1:
        text += f" ({_number(ratio['min'])}{DASH}{_number(ratio['max'])})"
    if diff is not None:
        text += f", {'+' if diff['of_medians'] >= 0 else ''}{_number(diff['of_medians'])} ms"
    return text


def _table(scenario: dict[str, Any], sides: list[dict[str, Any]]) -> list[str]:
    """The scenario's table: direct, the gateway, and each further gateway side (--upstreams)."""
    extra = sides[1:]
    first = _count(sides[0]["upstreams"]) if extra else ""
    head = ["case", "figure", "direct", f"gateway, {first}" if extra else "gateway", "gateway vs direct"]
    for side in extra:
        head += [f"gateway, {_count(side['upstreams'])}", "vs direct", f"{side['upstreams']} vs {first}"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    compared = set(scenario["compare"]) | set(scenario.get("gateway_figures", []))
    for case in scenario["cases"]:
        others = [case.get("sides", {}).get(side["side"], {}) for side in extra]
        names = list(
            dict.fromkeys([*case["direct"], *case["gateway"], *(n for o in others for n in o.get("gateway", {}))])
        )
        for index, name in enumerate(names):
            kind = scenario["compare"].get(name)
            row = [
                case["case"] if index == 0 else "",
                LABELS.get(name, name),
                _cell(case["direct"].get(name)),
                _cell(case["gateway"].get(name)),
                _direct_cell(case["vs_direct"], kind, name),
            ]
            for other in others:
                row += [
                    _cell(other.get("gateway", {}).get(name)),
                    _direct_cell(other.get("vs_direct", {}), kind, name),
                    _versus_cell(other.get("vs_gateway"), kind, name) if name in compared else "",
                ]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _direct_cell(vs_direct: dict[str, Any], kind: str | None, name: str) -> str:
    versus = vs_direct.get(f"{name}_{kind}") if kind else None
    prefix = "x" if kind == "ratio" else "+" if versus and versus["median"] >= 0 else ""
    return _cell(versus, prefix)
