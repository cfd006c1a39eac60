"""The usage report and chart over the roll-ups give the answers the plain queries over ``usage``
give (the reference below is the implementation they replaced), on a populated database and on
one upgraded in place; and their cost does not grow with the rows of ``usage`` behind them."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.database.sqlite import MIGRATIONS, Database
from gateway.usage.accounting import UsageLedger
from gateway.usage.report import GROUPINGS, MAX_DAYS, MAX_SERIES, STACKINGS, UsageQuery, daily, report
from gateway.usage.store import SqliteUsageStore, UsageCounts, UsageKey, open_usage_store
from tests.records import make_record

pytestmark = pytest.mark.timeout(60)

START = dt.date(2025, 1, 1)
DAYS = MAX_DAYS + 34  # past the chart's bound
LAST = (START + dt.timedelta(days=DAYS - 1)).isoformat()
Row = tuple[str, str, str, str, int, int, int, int]


def _rows(seed: int = 7) -> list[Row]:
    """Sparse usage: 25 keys (more series than the chart shows; two key ids share a name, as a
    name given again after its key was retired would), 4 models and "" (no model), ties in
    totals, and a formula-like name."""
    rng = random.Random(seed)
    names = [f"key-{n:02d}" for n in range(23)] + ["=cmd", "key-00"]
    rows = []
    for offset, (key, name), model in itertools.product(
        range(DAYS), enumerate(names), ["llama3.2:latest", "qwen3:latest", "", "m-3", "m-4"]
    ):
        if rng.random() < 0.12:
            day = (START + dt.timedelta(days=offset)).isoformat()
            tokens = 7 if name in ("key-05", "key-06") else rng.randrange(0, 500)  # ties
            rows.append((day, f"k{key}", name, model, rng.randrange(1, 9), tokens, rng.randrange(0, 300), key % 3))
    return rows


def _batches(rows: list[Row]) -> Iterator[dict[UsageKey, UsageCounts]]:
    """The rows as flushes write them: a day at a time, each row in two halves (two upserts)."""
    for _, of_day in itertools.groupby(rows, key=lambda row: row[0]):
        day_rows = list(of_day)
        for half in (0, 1):
            yield {
                UsageKey(*row[:4]): UsageCounts(*((value + half) // 2 for value in row[4:]))  # type: ignore[arg-type]
                for row in day_rows
            }


QUERIES: list[dict[str, str]] = [
    {},
    {"since": LAST},  # the last day only
    {"until": START.isoformat()},  # the first day only
    {"since": "2025-03-01", "until": "2025-03-31"},
    {"since": "2025-03-01", "until": "2025-03-01"},  # one day
    {"since": "2024-01-01", "until": "2024-12-31"},  # an empty range: before any usage
    {"since": "2027-01-01"},  # after
    {"key": "key-03"},
    {"key": "key-00"},  # two key ids
    {"key": "=cmd", "since": "2025-06-01"},
    {"key": "nobody"},  # an unknown key
    {"key": "key-07", "since": "2025-02-10", "until": "2025-02-10"},
]


# The implementation replaced, kept as the reference: plain sums over ``usage``.
def _reference_rows(connection: sqlite3.Connection, select: str, group: str, query: UsageQuery) -> list[Any]:
    clauses, parameters = [], []
    for clause, value in (("day >= ?", query.since), ("day <= ?", query.until), ("key_name = ?", query.key)):
        if value is not None:
            clauses.append(clause)
            parameters.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sums = "SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(errors)"
    sql = f"SELECT {select}, {sums} FROM usage {where} GROUP BY {group} ORDER BY {group}"
    return connection.execute(sql, parameters).fetchall()


def _reference_report(connection: sqlite3.Connection, query: UsageQuery) -> dict[str, Any]:
    column = {"key": "key_name", "model": "model", "day": "day"}[query.by]
    rows = _reference_rows(connection, column, column, query)
    columns = ("requests", "prompt_tokens", "completion_tokens", "errors")
    total = [sum(row[n] for row in rows) for n in range(1, 5)]
    return {
        "by": query.by,
        "since": query.since,
        "until": query.until,
        "key": query.key,
        "rows": [{query.by: row[0] or None, **dict(zip(columns, row[1:], strict=True))} for row in rows],
        "total": dict(zip(columns, total, strict=True)),
    }


def _reference_daily(connection: sqlite3.Connection, query: UsageQuery, stack: str) -> dict[str, Any]:
    column = {"key": "key_name", "model": "model"}[stack]
    rows = _reference_rows(connection, f"day, {column}", f"day, {column}", query)
    all_days = sorted({row[0] for row in rows})
    days = all_days[-MAX_DAYS:]
    index = {row_day: position for position, row_day in enumerate(days)}
    series: dict[str, list[int]] = {}
    for row_day, group, _, prompt, completion, _ in rows:
        if row_day in index:
            series.setdefault(group, [0] * len(days))[index[row_day]] += prompt + completion
    named = sorted(series.items())
    other: list[int] | None = None
    if len(named) > MAX_SERIES:
        kept = {name for name, _ in sorted(named, key=lambda item: -sum(item[1]))[: MAX_SERIES - 1]}
        other = [sum(values) for values in zip(*(tokens for name, tokens in named if name not in kept), strict=True)]
        named = [(name, tokens) for name, tokens in named if name in kept]
    listed: list[dict[str, Any]] = [{"name": name or None, "tokens": tokens} for name, tokens in named]
    if other is not None:
        listed.append({"name": None, "other": True, "tokens": other})
    return {"stack": stack, "days": days, "truncated": len(all_days) > len(days), "series": listed}


def _assert_same_answers(store: SqliteUsageStore, path: Path) -> None:
    with sqlite3.connect(path) as connection:
        for filters in QUERIES:
            for by in GROUPINGS:
                query = UsageQuery(by, filters.get("since"), filters.get("until"), filters.get("key"))
                assert report(store, query).as_json() == _reference_report(connection, query), query
            for stack in STACKINGS:
                query = UsageQuery("day", filters.get("since"), filters.get("until"), filters.get("key"))
                assert daily(store, query, stack) == _reference_daily(connection, query, stack), (query, stack)


def test_the_answers_are_the_plain_sums_over_usage(database_url: str, tmp_path: Path) -> None:
    store = open_usage_store(database_url)
    try:
        for batch in _batches(_rows()):
            store.add(batch)
        _assert_same_answers(store, tmp_path / "gateway.db")
        chart = daily(store, UsageQuery(), "key")
    finally:
        store.close()
    # The cases compared above include the chart's bounds, and the ties among its largest series.
    assert (chart["truncated"], len(chart["days"]), len(chart["series"])) == (True, MAX_DAYS, MAX_SERIES)
    assert chart["series"][-1]["other"] is True
    assert daily(open_usage_store(database_url), UsageQuery(key="nobody"), "key") == {
        "stack": "key",
        "days": [],
        "truncated": False,
        "series": [],
    }


def _schema_5_file(path: Path, rows: list[Row]) -> None:
    """A database as the previous release left it: schema 5, usage written, no roll-ups."""
    with sqlite3.connect(path, isolation_level=None) as connection:
        for migration in MIGRATIONS[:5]:
            for statement in filter(str.strip, migration.sqlite.split(";")):
                connection.execute(statement)
        connection.execute("PRAGMA user_version=5")
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        connection.execute("COMMIT")
    connection.close()


def test_a_database_upgraded_in_place_gives_the_same_answers(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    _schema_5_file(path, _rows(seed=11))
    store = open_usage_store(database_url)  # migrates, filling the roll-ups from usage
    try:
        _assert_same_answers(store, path)
        # Usage written after the upgrade lands in the roll-ups filled by it.
        store.add({UsageKey(LAST, "k1", "key-01", "m-3"): UsageCounts(2, 30, 40, 1)})
        _assert_same_answers(store, path)
    finally:
        store.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        for table, columns in (("usage_key_days", "key_name, day"), ("usage_model_days", "day, model")):
            sums = "SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(errors)"
            filled = connection.execute(
                f"SELECT {columns}, requests, prompt_tokens, completion_tokens, errors FROM {table} ORDER BY {columns}"
            ).fetchall()
            summed = connection.execute(f"SELECT {columns}, {sums} FROM usage GROUP BY {columns} ORDER BY {columns}")
            assert filled == summed.fetchall()
    connection.close()


def _steps(store: SqliteUsageStore, database: Database, work: Any) -> int:
    """SQLite's virtual machine instructions run by ``work`` (counted by hundreds)."""
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0

    database.run(lambda connection: connection.set_progress_handler(count, 100))
    try:
        work(store)
    finally:
        database.run(lambda connection: connection.set_progress_handler(None, 0))
    return counted[0]


@pytest.mark.parametrize(
    "work",
    [
        lambda store: report(store, UsageQuery(by="key")),
        lambda store: report(store, UsageQuery(by="day", key="key-1")),
        lambda store: daily(store, UsageQuery(), "key"),
        lambda store: daily(store, UsageQuery(key="key-1"), "key"),
    ],
)
def test_reports_by_key_or_day_do_not_grow_with_the_rows_behind_them(tmp_path: Path, work: Any) -> None:
    """The same days and keys, behind them 1 model or 12: the work grows by far less than the rows."""
    steps = []
    for models in (1, 12):
        database = Database(f"sqlite:///{tmp_path / f'{models}.db'}")
        database.open()
        store = SqliteUsageStore(database)
        for offset in range(60):
            day = (START + dt.timedelta(days=offset)).isoformat()
            store.add(
                {
                    UsageKey(day, f"k{key}", f"key-{key}", f"m{model}"): UsageCounts(1, key, model, 0)
                    for key in range(30)
                    for model in range(models)
                }
            )
        steps.append(_steps(store, database, work))
        database.close()
    # Over the 12x rows of usage the plain sums run ~12x the instructions; over the roll-ups, as many.
    assert steps[1] < 1.5 * steps[0], steps


def test_series_tied_at_the_chart_bound_are_kept_by_name(database_url: str, tmp_path: Path) -> None:
    """18 large series, then three with equal totals for the last place: the first by name is kept."""
    rows = {UsageKey("2026-01-01", f"k{n}", f"big-{n:02d}", "m"): UsageCounts(1, 100 + n, 0, 0) for n in range(18)}
    for name in ("tie-b", "tie-c", "tie-a"):
        rows[UsageKey("2026-01-01", name, name, "m")] = UsageCounts(1, 3, 2, 0)
        rows[UsageKey("2026-01-02", name, name, "m")] = UsageCounts(1, 0, 1, 0)
    store = open_usage_store(database_url)
    try:
        store.add(rows)
        chart = daily(store, UsageQuery(), "key")
        _assert_same_answers(store, tmp_path / "gateway.db")
    finally:
        store.close()
    assert [series["name"] for series in chart["series"]] == [*(f"big-{n:02d}" for n in range(18)), "tie-a", None]
    assert chart["series"][-1] == {"name": None, "other": True, "tokens": [10, 2]}


def test_a_utc_day_boundary(database_url: str, tmp_path: Path) -> None:
    """Requests either side of midnight UTC count on two days, in the report and in the chart."""
    midnight = dt.datetime(2026, 1, 2, tzinfo=dt.UTC).timestamp()
    store = open_usage_store(database_url)

    async def account() -> None:
        ledger = UsageLedger(lambda: store, flush_interval=3600)
        await ledger.start()
        ledger(make_record(time=midnight - 0.001, prompt_tokens=5, completion_tokens=1))
        ledger(make_record(time=midnight, prompt_tokens=7, completion_tokens=2))
        await ledger.flush()

    try:
        asyncio.run(account())
        by_day = report(store, UsageQuery(by="day")).as_json()["rows"]
        after = report(store, UsageQuery(by="day", since="2026-01-02")).as_json()["rows"]
        chart = daily(store, UsageQuery(), "model")
        _assert_same_answers(store, tmp_path / "gateway.db")
    finally:
        store.close()
    assert [(row["day"], row["prompt_tokens"]) for row in by_day] == [("2026-01-01", 5), ("2026-01-02", 7)]
    assert [row["day"] for row in after] == ["2026-01-02"]
    assert chart == {
        "stack": "model",
        "days": ["2026-01-01", "2026-01-02"],
        "truncated": False,
        "series": [{"name": "llama3.2", "tokens": [6, 9]}],
    }


def test_postgresql_gives_the_same_answers(database_url: str, postgres_url: str) -> None:
    """The same flushes written to SQLite and to PostgreSQL: every report and chart alike (sums,
    the order of names by code point, the chart's bounds and ties)."""
    sqlite_store, postgres_store = open_usage_store(database_url), open_usage_store(postgres_url)
    try:
        for batch in _batches(_rows()):
            sqlite_store.add(batch)
            postgres_store.add(batch)
        for filters in QUERIES:
            for by in GROUPINGS:
                query = UsageQuery(by, filters.get("since"), filters.get("until"), filters.get("key"))
                assert report(postgres_store, query) == report(sqlite_store, query), query
            for stack in STACKINGS:
                query = UsageQuery("day", filters.get("since"), filters.get("until"), filters.get("key"))
                assert daily(postgres_store, query, stack) == daily(sqlite_store, query, stack), (query, stack)
    finally:
        sqlite_store.close()
        postgres_store.close()
