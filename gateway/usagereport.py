"""The usage report: one implementation of its filters, totals and formats, for the CLI and the
admin API (``ollama-gateway usage`` and ``/admin/api/usage`` answer the same question the same way).

Counts reach the database in batches (every GATEWAY_USAGE_FLUSH_INTERVAL seconds and at shutdown),
so a report taken while the gateway runs can lag by that much.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from gateway.usagestore import Grouping, SqliteUsageStore, UsageCounts

COLUMNS: Final = ("requests", "prompt_tokens", "completion_tokens", "errors")
GROUPINGS: Final = get_args(Grouping)
Stacking = Literal["key", "model"]
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class InvalidUsageQuery(ValueError):
    """A filter names an impossible day or grouping, or an empty range."""


def day(text: str) -> str:
    """A calendar day as YYYY-MM-DD (usage days are UTC)."""
    try:
        if not _DAY.fullmatch(text):
            raise ValueError
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise InvalidUsageQuery(f"{text!r} is not a date (expected YYYY-MM-DD, e.g. 2026-01-31)") from None


@dataclass(frozen=True, slots=True)
class UsageQuery:
    by: Grouping = "key"
    since: str | None = None
    until: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.by not in GROUPINGS:
            raise InvalidUsageQuery(f"{self.by!r} is not a grouping (one of {', '.join(GROUPINGS)})")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise InvalidUsageQuery(f"--since {self.since} is after --until {self.until}")


def numbers(counts: UsageCounts) -> dict[str, int]:
    return {column: getattr(counts, column) for column in COLUMNS}


@dataclass(frozen=True, slots=True)
class UsageReport:
    query: UsageQuery
    rows: list[tuple[str, UsageCounts]]
    total: UsageCounts = field(default_factory=UsageCounts)

    def as_json(self) -> dict[str, Any]:
        return {
            "by": self.query.by,
            "since": self.query.since,
            "until": self.query.until,
            "key": self.query.key,
            # A request that named no model is grouped under null.
            "rows": [{self.query.by: group or None, **numbers(counts)} for group, counts in self.rows],
            "total": numbers(self.total),
        }

    def as_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([self.query.by, *COLUMNS])
        for group, counts in self.rows:
            writer.writerow([_cell(group), *numbers(counts).values()])
        return out.getvalue()


def _cell(text: str) -> str:
    # A key name or model opened in a spreadsheet must not run as a formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report(store: SqliteUsageStore, query: UsageQuery) -> UsageReport:
    rows = store.report(by=query.by, since=query.since, until=query.until, key_name=query.key)
    total = UsageCounts()
    for _, counts in rows:
        total.add(counts)
    return UsageReport(query, rows, total)


def daily(store: SqliteUsageStore, query: UsageQuery, stack: Stacking) -> dict[str, Any]:
    """Tokens per day for a chart stacked by key or model: ``{days, series: [{name, tokens}]}``."""
    rows = store.daily(by=stack, since=query.since, until=query.until, key_name=query.key)
    days = sorted({row_day for row_day, _, _ in rows})
    index = {row_day: position for position, row_day in enumerate(days)}
    series: dict[str, list[int]] = {}
    for row_day, group, counts in rows:
        tokens = series.setdefault(group, [0] * len(days))
        tokens[index[row_day]] += counts.prompt_tokens + counts.completion_tokens
    return {
        "stack": stack,
        "days": days,
        "series": [{"name": name or None, "tokens": tokens} for name, tokens in sorted(series.items())],
    }
