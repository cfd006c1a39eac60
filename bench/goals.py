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
    scenario: str  # "a".."d", or "meta" for a figure of the whole run
    figure: str
    op: str
    limit: float
    side: str = "gateway"  # or "vs_direct"
    stat: str = "median"  # "max" where every repetition must pass
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
)


def check(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal and matching case; goals whose case was not run are left out."""
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
    values = [
        spread["max"]
        for side in ("direct", "gateway")
        for name, spread in case[side].items()
        if name.startswith("steal_") and spread is not None
    ]
    return max(values, default=None)


def _row(goal: Goal, case: str, value: float, steal: float | None = None) -> dict[str, Any]:
    met = _OPS[goal.op](value, goal.limit)
    return {"goal": goal.text, "case": case, "value": value, "stat": goal.stat, "met": met, "steal_max_pct": steal}
