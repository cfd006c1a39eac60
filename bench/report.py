"""The report: medians with min-max over repetitions, gateway vs direct, as JSON and Markdown."""

from __future__ import annotations

from typing import Any

from bench import soakreport
from bench.goals import check
from bench.scenarios import Outcome, Scenario
from bench.stats import Spread, spread

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


def scenario_report(scenario: Scenario, outcome: Outcome) -> dict[str, Any]:
    cases = []
    for case in scenario.cases:
        runs = outcome.runs.get(case.name, {})
        direct, gateway = runs.get("direct", []), runs.get("gateway", [])
        # Compared per repetition: each gateway run against the direct run just before it.
        pairs = list(zip(direct, gateway, strict=False))
        vs_direct = {
            f"{name}_{kind}": _json(spread([_compare(d.get(name), g.get(name), kind) for d, g in pairs]))
            for name, kind in scenario.compare.items()
        }
        cases.append(
            {
                "case": case.name,
                "params": case.params,
                "direct": _spreads(direct),
                "gateway": _spreads(gateway),
                "vs_direct": vs_direct,
            }
        )
    return {"title": scenario.title, "compare": scenario.compare, "cases": cases, "error": outcome.error}


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
        f"- gateway: {meta['gateway']['version']}, source sha256 {meta['gateway']['source_sha256']} (gateway/**/*.py)",
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
                f"- repetitions: {meta['repeat']}, interleaved (direct, then gateway); "
                f"each figure is the median, (min{DASH}max) across repetitions"
            ]
        ),
        f"- gateway RSS: {meta['gateway_rss_start_mib']:.1f} MiB after start, "
        f"{meta['gateway_rss_idle_mib']:.1f} MiB idle after warm-up",
        "- features on in the gateway:",
        *(f"  - {feature}" for feature in meta["features"]),
    ]
    for key, scenario in report["scenarios"].items():
        lines += ["", f"## ({key}) {scenario['title']}", ""]
        if scenario["error"]:
            lines += [f"**Incomplete: {scenario['error']}**", ""]
        lines += ["| case | figure | direct | gateway | gateway vs direct |", "|---|---|---:|---:|---:|"]
        for case in scenario["cases"]:
            names = list(dict.fromkeys([*case["direct"], *case["gateway"]]))
            for index, name in enumerate(names):
                kind = scenario["compare"].get(name)
                versus = case["vs_direct"].get(f"{name}_{kind}") if kind else None
                prefix = "x" if kind == "ratio" else "+" if versus and versus["median"] >= 0 else ""
                row = [
                    case["case"] if index == 0 else "",
                    LABELS.get(name, name),
                    _cell(case["direct"].get(name)),
                    _cell(case["gateway"].get(name)),
                    _cell(versus, prefix),
                ]
                lines.append("| " + " | ".join(row) + " |")
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
            steal = "" if goal["steal_max_pct"] is None else _number(goal["steal_max_pct"])
            met = "yes" if goal["met"] else "**no**"
            lines.append(f"| {goal['goal']} | {goal['case']} | {measured} | {met} | {steal} |")
    return "\n".join(lines) + "\n"
