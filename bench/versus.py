"""One gateway side against another (``--upstreams 1,3``): 3 upstreams over 1, figure by figure.

Each repetition ran the direct target and every gateway side back to back, so the figures are
paired by repetition, as gateway vs direct is. For each figure the headline is the **ratio of the
medians** over the repetitions (a ratio of two sub-millisecond differences from a single
repetition is too noisy to summarise alone); the per-repetition ratios give its range.

- ``<figure>_ratio``: other / base, for throughput and the gateway's own cost figures;
- ``<figure>_added_ratio``: (other - direct) / (base - direct), what each gateway side adds to
  the same direct run, for latencies; ``<figure>_added_diff``: the same as a difference (ms).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from bench.stats import spread

Runs = Sequence[dict[str, float | None]]


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _ratio(base: Sequence[float | None], other: Sequence[float | None]) -> dict[str, object] | None:
    per_rep = [o / b if o is not None and b is not None and b > 0 else None for b, o in zip(base, other, strict=False)]
    summary = spread(per_rep)
    low, high = _median(base), _median(other)
    if summary is None or low is None or high is None or low <= 0:
        return None
    return {**summary.as_json(), "of_medians": high / low}


def _difference(base: Sequence[float | None], other: Sequence[float | None]) -> dict[str, object] | None:
    per_rep = [o - b if o is not None and b is not None else None for b, o in zip(base, other, strict=False)]
    summary = spread(per_rep)
    low, high = _median(base), _median(other)
    if summary is None or low is None or high is None:
        return None
    return {**summary.as_json(), "of_medians": high - low}


def _added(direct: Runs, side: Runs, name: str) -> list[float | None]:
    added: list[float | None] = []
    for d, g in zip(direct, side, strict=False):
        before, after = d.get(name), g.get(name)
        added.append(None if before is None or after is None else after - before)
    return added


def versus(
    compare: dict[str, str], gateway_figures: Sequence[str], direct: Runs, base: Runs, other: Runs
) -> dict[str, Any]:
    """``other`` gateway side against ``base``, with ``direct`` the runs both were paired with."""
    figures: dict[str, Any] = {}
    for name, kind in compare.items():
        if kind == "added":
            base_added, other_added = _added(direct, base, name), _added(direct, other, name)
            figures[f"{name}_added_ratio"] = _ratio(base_added, other_added)
            figures[f"{name}_added_diff"] = _difference(base_added, other_added)
        else:
            figures[f"{name}_ratio"] = _ratio([run.get(name) for run in base], [run.get(name) for run in other])
    for name in gateway_figures:
        figures[f"{name}_ratio"] = _ratio([run.get(name) for run in base], [run.get(name) for run in other])
    return figures
