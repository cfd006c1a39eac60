"""Percentiles within a run and the median / min / max across repetitions."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    runs: tuple[float, ...]

    def as_json(self) -> dict[str, object]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": list(self.runs)}


def spread(values: Sequence[float | None]) -> Spread | None:
    """Median and range of the repetitions that produced a value."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present), tuple(present))
