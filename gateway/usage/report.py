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
from typing import TYPE_CHECKING, Any, Final, Literal, cast, get_args

from gateway.errors import shown
from gateway.usage.store import Grouping, UsageCounts

if TYPE_CHECKING:
    from gateway.usage.store import ReportStore

COLUMNS: Final = ("requests", "prompt_tokens", "completion_tokens", "errors")
GROUPINGS: Final = get_args(Grouping)
Stacking = Literal["key", "model"]
STACKINGS: Final = get_args(Stacking)
Format = Literal["json", "csv"]
FORMATS: Final = get_args(Format)
# The chart's bounds: a year of days, and the largest series (the rest summed as one).
MAX_DAYS = 366
MAX_SERIES = 20
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
        raise InvalidUsageQuery(f"{shown(text)} is not a date (expected YYYY-MM-DD, e.g. 2026-01-31)") from None


def _one_of(text: str, choices: tuple[str, ...], what: str) -> str:
    if text not in choices:
        raise InvalidUsageQuery(f"{shown(text)} is not {what} (one of {', '.join(choices)})")
    return text


def grouping(text: str) -> Grouping:
    return cast(Grouping, _one_of(text, GROUPINGS, "a grouping"))


def stacking(text: str) -> Stacking:
    return cast(Stacking, _one_of(text, STACKINGS, "a stacking"))


def report_format(text: str) -> Format:
    return cast(Format, _one_of(text, FORMATS, "a format"))


@dataclass(frozen=True, slots=True)
class UsageQuery:
    by: Grouping = "key"
    since: str | None = None
    until: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        grouping(self.by)
        if self.since is not None and self.until is not None and self.since > self.until:
            raise InvalidUsageQuery(f"since {self.since} is after until {self.until}")


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


def report(store: ReportStore, query: UsageQuery) -> UsageReport:
    rows = store.report(by=query.by, since=query.since, until=query.until, key_name=query.key)
    total = UsageCounts()
    for _, counts in rows:
        total.add(counts)
    return UsageReport(query, rows, total)


def daily(store: ReportStore, query: UsageQuery, stack: Stacking) -> dict[str, Any]:
    """Tokens per day for a chart stacked by key or model: ``{days, series: [{name, tokens}]}``.

    Bounded: the last ``MAX_DAYS`` days of the range (``truncated`` says so), and the
    ``MAX_SERIES - 1`` largest series with the rest summed as one, ``{"name": null, "other": true}``.
    The database sums and ranks; what is read here is at most ``MAX_DAYS`` x ``MAX_SERIES`` cells.
    """
    chart = store.daily_tokens(
        by=stack,
        since=query.since,
        until=query.until,
        key_name=query.key,
        max_days=MAX_DAYS,
        max_series=MAX_SERIES,
    )
    index = {row_day: position for position, row_day in enumerate(chart.days)}
    series = {name: [0] * len(chart.days) for name in chart.named}
    for row_day, group, tokens in chart.cells:
        series[group][index[row_day]] = tokens
    listed: list[dict[str, Any]] = [{"name": name or None, "tokens": series[name]} for name in chart.named]
    if chart.totals is not None:
        other = [0] * len(chart.days)
        for row_day, tokens in chart.totals:
            other[index[row_day]] = tokens
        for tokens_of_series in series.values():
            other = [total - named for total, named in zip(other, tokens_of_series, strict=True)]
        listed.append({"name": None, "other": True, "tokens": other})
    return {"stack": stack, "days": chart.days, "truncated": chart.truncated, "series": listed}
