"""The figures the gateway is judged against (one core for the gateway), checked on a report."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}


@dataclass(frozen=True)
class Goal:
    text: str
    scenario: str  # "a".."e", or "meta" for a figure of the whole run
    figure: str
    op: str
    limit: float
    side: str = "gateway"  # or "vs_direct"; "vs_gateway" for a further gateway side (--upstreams)
    stat: str = "median"  # "max" where every repetition must pass; "of_medians" for vs_gateway
    where: tuple[tuple[str, object], ...] = ()  # case parameters that must match

    def matches(self, params: dict[str, Any]) -> bool:
        return all(params.get(name) == value for name, value in self.where)


GOALS = (
    Goal(
        "gateway CPU per small request at c=16 <= 1.0 ms",
        "a",
        "gateway_cpu_ms_per_request",
        "<=",
        1.0,
        where=(("concurrency", 16),),
    ),
    Goal(
        "added p50 latency at c=1 <= 1 ms",
        "a",
        "latency_p50_ms_added",
        "<=",
        1.0,
        "vs_direct",
        where=(("concurrency", 1),),
    ),
    Goal("gateway CPU per 1000 relayed chunks <= 150 ms", "b", "gateway_cpu_ms_per_1k_chunks", "<=", 150),
    Goal(
        "500 streams: TTFB p99 over upstream's <= 100 ms",
        "b",
        "ttfb_p99_ms_added",
        "<=",
        100,
        "vs_direct",
        where=(("streams", 500),),
    ),
    Goal(
        "500 streams: added per-chunk delay p99 <= 5 ms",
        "b",
        "delay_p99_ms_added",
        "<=",
        5,
        "vs_direct",
        where=(("streams", 500),),
    ),
    Goal("no lost chunks", "b", "chunks_lost", "<=", 0, stat="max"),
    Goal("no reordered chunks", "b", "out_of_order", "<=", 0, stat="max"),
    Goal("gateway RSS growth per open stream <= 40 KiB", "b", "gateway_kib_per_stream", "<=", 40),
    Goal("blob upload >= 70 % of direct throughput", "c", "mib_per_s_ratio", ">=", 0.7, "vs_direct"),
    Goal("blob upload: gateway RSS growth < 64 MiB", "c", "gateway_rss_growth_mib", "<", 64),
    Goal("hang-up reaches the upstream, p50 <= 2 ms", "d", "close_p50_ms", "<=", 2),
    Goal("gateway RSS idle <= 80 MiB", "meta", "gateway_rss_idle_mib", "<=", 80),
    Goal("one large body stalls a 50 ms stream by <= 100 ms", "e", "stream_stall_ms", "<=", 100, stat="max"),
    Goal("one large body stalls /healthz by <= 100 ms", "e", "healthz_max_ms", "<=", 100, stat="max"),
)


# With --upstreams 1,3: more servers behind the gateway must not make a request cost more. The
# text's {n} and {base} are the upstream counts of the side and of the baseline.
UPSTREAM_GOALS = (
    Goal(
        "{n} vs {base}: gateway CPU per small request at c=16 <= 1.10 x",
        "a",
        "gateway_cpu_ms_per_request_ratio",
        "<=",
        1.10,
        "vs_gateway",
        "of_medians",
        where=(("concurrency", 16),),
    ),
    Goal(
        "{n} vs {base}: added p50 latency at c=1 <= 1.10 x",
        "a",
        "latency_p50_ms_added_ratio",
        "<=",
        1.10,
        "vs_gateway",
        "of_medians",
        where=(("concurrency", 1),),
    ),
)


def check(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal and matching case; goals whose case was not run are left out."""
    rows = _scenario_rows(report)
    sides = report["meta"].get("sides", [])
    for goal in UPSTREAM_GOALS:
        scenario = report["scenarios"].get(goal.scenario)
        for side in sides[1:]:
            text = goal.text.format(n=_count(side["upstreams"]), base=_count(sides[0]["upstreams"]))
            for case in scenario["cases"] if scenario else []:
                versus = case.get("sides", {}).get(side["side"], {}).get(goal.side) or {}
                spread = versus.get(goal.figure) if goal.matches(case["params"]) else None
                if spread is not None:
                    rows.append(_row(goal, case["case"], spread[goal.stat], _worst_steal(case), text))
    return rows


def _count(upstreams: int) -> str:
    return f"{upstreams} upstream{'' if upstreams == 1 else 's'}"


def _scenario_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for goal in GOALS:
        if goal.scenario == "meta":
            value = report["meta"].get(goal.figure)
            if value is not None:
                rows.append(_row(goal, "whole run", value))
            continue
        scenario = report["scenarios"].get(goal.scenario)
        for case in scenario["cases"] if scenario else []:
            spread = case[goal.side].get(goal.figure) if goal.matches(case["params"]) else None
            if spread is not None:
                rows.append(_row(goal, case["case"], spread[goal.stat], _worst_steal(case)))
    return rows


def _worst_steal(case: dict[str, Any]) -> float | None:
    """The highest steal any CPU saw in any of the case's runs: how far to trust its figures."""
    sides = [case["direct"], case["gateway"], *(side["gateway"] for side in case.get("sides", {}).values())]
    values = [
        spread["max"]
        for figures in sides
        for name, spread in figures.items()
        if name.startswith("steal_") and spread is not None
    ]
    return max(values, default=None)


def _row(goal: Goal, case: str, value: float, steal: float | None = None, text: str = "") -> dict[str, Any]:
    met = _OPS[goal.op](value, goal.limit)
    return {
        "goal": text or goal.text,
        "case": case,
        "value": value,
        "stat": goal.stat,
        "met": met,
        "steal_max_pct": steal,
    }
