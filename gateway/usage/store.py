"""Token usage in the embedded SQLite database: batched upserts, and the report queries.

Every batch is added to ``usage`` (one row per day, key and model) and, in the same transaction, to
two roll-ups (database/sqlite.py, migration 7): per key name and day, and per day and model. A report
reads the smallest table that answers it, and sums in SQL: a year of 250 keys and 10 models is
~910,000 rows of ``usage`` but ~91,000 of the first roll-up and ~3,650 of the second. ``usage``
itself is read only for one key's models (through its (key_name, day) index: that key's rows).

The roll-up per key name adds a batch's counts to the name each row carries: a key's name never
changes (``keys.name`` is fixed at creation), so that is the name ``usage`` holds for it too.

The report queries are PostgreSQL's too: its store (``postgres.py``) runs them through a
connection taking their ``?`` placeholders, with its own collation, snapshot and batch write
(the hooks ``_run``, ``_by``, ``_snapshot`` and ``add``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, TypeVar

from gateway.database.sqlite import Database, transaction

if TYPE_CHECKING:
    from gateway.usage.postgres import PostgresUsageStore

    # Either backend's store, as the reports (the CLI, the admin API) use it.
    ReportStore: TypeAlias = "SqliteUsageStore | PostgresUsageStore"


@dataclass(frozen=True, slots=True)
class UsageKey:
    day: str  # YYYY-MM-DD, UTC
    key_id: str
    key_name: str
    model: str  # "" where the request named no model


@dataclass(slots=True)
class UsageCounts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0

    def add(self, other: UsageCounts) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.errors += other.errors

    def row(self) -> tuple[int, int, int, int]:
        return self.requests, self.prompt_tokens, self.completion_tokens, self.errors


class UsageStore(Protocol):
    def add(self, rows: Mapping[UsageKey, UsageCounts]) -> None: ...

    def close(self) -> None: ...


Grouping = Literal["key", "model", "day"]
_COUNTS = ("requests", "prompt_tokens", "completion_tokens", "errors")
_SUMS = ", ".join(f"SUM({column})" for column in _COUNTS)
_TOKENS = "SUM(prompt_tokens + completion_tokens)"


def _upsert(table: str, identity: tuple[str, ...], latest: tuple[str, ...] = ()) -> str:
    """Add a row's counts to ``table``'s row with the same ``identity`` (its ``latest`` columns
    take the row's values). The columns are qualified with the table's name on the right:
    PostgreSQL finds a bare name there ambiguous."""
    columns = (*identity, *latest, *_COUNTS)
    updates = [
        *(f"{column} = {table}.{column} + excluded.{column}" for column in _COUNTS),
        *(f"{column} = excluded.{column}" for column in latest),
    ]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "  # noqa: S608
        f"ON CONFLICT ({', '.join(identity)}) DO UPDATE SET {', '.join(updates)}"
    )


T = TypeVar("T")

_ADD_USAGE = _upsert("usage", ("day", "key_id", "model"), ("key_name",))
_ADD_KEY_DAY = _upsert("usage_key_days", ("key_name", "day"))
_ADD_MODEL_DAY = _upsert("usage_model_days", ("day", "model"))


@dataclass(frozen=True, slots=True)
class _Source:
    """The table that answers a query, and its column for the grouping asked for."""

    table: str
    column: str

    @staticmethod
    def of(by: Grouping, key_name: str | None) -> _Source:
        if by == "key":
            return _Source("usage_key_days", "key_name")
        if by == "day":
            return _Source("usage_model_days" if key_name is None else "usage_key_days", "day")
        # One key's models: only ``usage`` has both (its index on (key_name, day) finds them).
        return _Source("usage_model_days" if key_name is None else "usage", "model")


@dataclass(frozen=True, slots=True)
class DailyTokens:
    """Tokens per day of the chart's days (the last ``max_days`` with usage in the range) for
    each ``named`` series (sorted), and, where more series have usage than are named, each day's
    total over all of them (``totals``): the rest is the difference."""

    days: list[str]
    truncated: bool
    named: list[str]
    cells: list[tuple[str, str, int]]
    totals: list[tuple[str, int]] | None


class SqliteUsageStore:
    """Usage in ``database``; closes it on ``close`` only when ``owned`` (the CLI's own)."""

    def __init__(self, database: Database, *, owned: bool = False) -> None:
        self._database = database
        self._owned = owned

    def add(self, rows: Mapping[UsageKey, UsageCounts]) -> None:
        if not rows:
            return
        per_key_day, per_model_day = rollups(rows)

        def upsert(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.executemany(
                    _ADD_USAGE,
                    [(key.day, key.key_id, key.model, key.key_name, *c.row()) for key, c in rows.items()],
                )
                connection.executemany(_ADD_KEY_DAY, [(*group, *c.row()) for group, c in per_key_day.items()])
                connection.executemany(_ADD_MODEL_DAY, [(*group, *c.row()) for group, c in per_model_day.items()])

        self._database.run(upsert)

    def report(
        self,
        *,
        by: Grouping,
        since: str | None = None,
        until: str | None = None,
        key_name: str | None = None,
    ) -> list[tuple[str, UsageCounts]]:
        """Totals grouped by key name, model or day; ``since``/``until`` are inclusive days."""
        source = _Source.of(by, key_name)
        where, parameters = _where(since, until, key_name)
        sql = (
            f"SELECT {source.column}, {_SUMS} FROM {source.table} {where} "  # noqa: S608
            f"GROUP BY {source.column} ORDER BY {self._by(source.column)}"
        )
        rows: list[tuple[str, int, int, int, int]] = self._run(
            lambda connection: connection.execute(sql, parameters).fetchall()
        )
        # int(): PostgreSQL's SUM of a BIGINT is a NUMERIC.
        return [(group, UsageCounts(*map(int, counts))) for group, *counts in rows]

    def daily_tokens(
        self,
        *,
        by: Literal["key", "model"],
        since: str | None = None,
        until: str | None = None,
        key_name: str | None = None,
        max_days: int,
        max_series: int,
    ) -> DailyTokens:
        """Prompt plus completion tokens per day and key name or model, at most ``max_days`` days
        (the last) and ``max_series`` series: past that, the ``max_series - 1`` largest over those
        days (ties by name) and the rest as one. Bounded queries, on one snapshot. Names are
        ordered by code point, as Python orders them (SQLite's BINARY collation of UTF-8;
        PostgreSQL needs ``COLLATE "C"`` for that)."""
        source = _Source.of(by, key_name)
        # The days with usage: those of the key's roll-up for one key, else the smaller roll-up's.
        days_from = "usage_key_days" if key_name is not None else "usage_model_days"
        where, parameters = _where(since, until, key_name)

        def query(connection: Any) -> DailyTokens:
            with self._snapshot(connection):
                found = [
                    row[0]
                    for row in connection.execute(
                        f"SELECT DISTINCT day FROM {days_from} {where} ORDER BY day DESC LIMIT ?",  # noqa: S608
                        [*parameters, max_days + 1],
                    )
                ]
                days = sorted(found[:max_days])
                if not days:
                    return DailyTokens([], False, [], [], None)
                kept_where, kept_parameters = _where(days[0], until, key_name)
                largest = [
                    row[0]
                    for row in connection.execute(
                        f"SELECT {source.column} FROM {source.table} {kept_where} GROUP BY {source.column} "  # noqa: S608
                        f"ORDER BY {_TOKENS} DESC, {self._by(source.column)} LIMIT ?",
                        [*kept_parameters, max_series + 1],
                    )
                ]
                other = len(largest) > max_series
                named = sorted(largest[: max_series - 1] if other else largest)
                # With more series than named: only the named series' rows (a key's range of the
                # primary key, a model's row of each day), and each day's total over all of them,
                # read from the smaller roll-up: the rest is the difference.
                only_named = f"AND {source.column} IN ({', '.join('?' * len(named))})" if other else ""
                cells = connection.execute(
                    f"SELECT day, {source.column}, {_TOKENS} FROM {source.table} {kept_where} {only_named} "  # noqa: S608
                    f"GROUP BY day, {source.column}",
                    [*kept_parameters, *(named if other else [])],
                ).fetchall()
                totals = None
                if other:
                    totals = connection.execute(
                        f"SELECT day, {_TOKENS} FROM {days_from} {kept_where} GROUP BY day",  # noqa: S608
                        kept_parameters,
                    ).fetchall()
                return DailyTokens(
                    days,
                    len(found) > max_days,
                    named,
                    [(day, group, int(tokens)) for day, group, tokens in cells],
                    None if totals is None else [(day, int(tokens)) for day, tokens in totals],
                )

        return self._run(query)

    # What differs on PostgreSQL (usage/postgres.py overrides these).
    def _run(self, work: Callable[[Any], T]) -> T:
        """``work`` with a connection taking ``?`` placeholders."""
        return self._database.run(work)

    def _by(self, column: str) -> str:
        """``column`` in ORDER BY, sorted by code point (as Python sorts)."""
        return column

    def _snapshot(self, connection: Any) -> contextlib.AbstractContextManager[None]:
        return _snapshot(connection)

    def close(self) -> None:
        if self._owned:
            self._database.close()


def open_usage_store(database_url: str) -> ReportStore:
    """A usage store with a database of its own (the CLI's): closing the store closes it."""
    from gateway.database import open_cli_database
    from gateway.usage.postgres import PostgresUsageStore

    database = open_cli_database(database_url)
    if isinstance(database, Database):
        return SqliteUsageStore(database, owned=True)
    return PostgresUsageStore(database, owned=True)


@contextlib.contextmanager
def _snapshot(connection: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: its queries see the same rows, whatever another process writes (in
    WAL mode SQLite's reads see one snapshot; PostgreSQL needs ISOLATION LEVEL REPEATABLE READ)."""
    connection.execute("BEGIN")
    try:
        yield
    finally:
        connection.execute("COMMIT")


def rollups(
    rows: Mapping[UsageKey, UsageCounts],
) -> tuple[dict[tuple[str, str], UsageCounts], dict[tuple[str, str], UsageCounts]]:
    """A batch summed per (key name, day) and per (day, model), as the roll-ups hold it."""
    per_key_day: dict[tuple[str, str], UsageCounts] = {}
    per_model_day: dict[tuple[str, str], UsageCounts] = {}
    for key, counts in rows.items():
        per_key_day.setdefault((key.key_name, key.day), UsageCounts()).add(counts)
        per_model_day.setdefault((key.day, key.model), UsageCounts()).add(counts)
    return per_key_day, per_model_day


def _where(since: str | None, until: str | None, key_name: str | None) -> tuple[str, list[str]]:
    clauses, parameters = [], []
    for clause, value in (("day >= ?", since), ("day <= ?", until), ("key_name = ?", key_name)):
        if value is not None:
            clauses.append(clause)
            parameters.append(value)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), parameters
