"""Token usage in the embedded SQLite database: batched upserts, and the report queries."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from gateway.database import Database, transaction

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


class UsageStore(Protocol):
    def add(self, rows: Mapping[UsageKey, UsageCounts]) -> None: ...

    def close(self) -> None: ...


Grouping = Literal["key", "model", "day"]
_GROUP_COLUMN = {"key": "key_name", "model": "model", "day": "day"}


class SqliteUsageStore:
    """Usage in ``database``; closes it on ``close`` only when ``owned`` (the CLI's own)."""

    def __init__(self, database: Database, *, owned: bool = False) -> None:
        self._database = database
        self._owned = owned

    def add(self, rows: Mapping[UsageKey, UsageCounts]) -> None:
        if not rows:
            return

        def upsert(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.executemany(
                    "INSERT INTO usage (day, key_id, key_name, model, requests, prompt_tokens, completion_tokens, "
                    "errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, key_id, model) DO UPDATE SET "
                    "requests = requests + excluded.requests, "
                    "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                    "completion_tokens = completion_tokens + excluded.completion_tokens, "
                    "errors = errors + excluded.errors, key_name = excluded.key_name",
                    [
                        (
                            key.day,
                            key.key_id,
                            key.key_name,
                            key.model,
                            c.requests,
                            c.prompt_tokens,
                            c.completion_tokens,
                            c.errors,
                        )
                        for key, c in rows.items()
                    ],
                )

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
        where, parameters = _where(since, until, key_name)
        column = _GROUP_COLUMN[by]
        rows: Iterable[tuple[str, int, int, int, int]] = self._database.run(
            lambda connection: connection.execute(
                f"SELECT {column}, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(errors) "  # noqa: S608
                f"FROM usage {where} GROUP BY {column} ORDER BY {column}",
                parameters,
            ).fetchall()
        )
        return [(group, UsageCounts(*counts)) for group, *counts in rows]

    def daily(
        self,
        *,
        by: Literal["key", "model"],
        since: str | None = None,
        until: str | None = None,
        key_name: str | None = None,
    ) -> list[tuple[str, str, UsageCounts]]:
        """Totals per (day, key name or model), for a chart of days stacked by key or model."""
        where, parameters = _where(since, until, key_name)
        column = _GROUP_COLUMN[by]
        rows: Iterable[tuple[str, str, int, int, int, int]] = self._database.run(
            lambda connection: connection.execute(
                f"SELECT day, {column}, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), "  # noqa: S608
                f"SUM(errors) FROM usage {where} GROUP BY day, {column} ORDER BY day, {column}",
                parameters,
            ).fetchall()
        )
        return [(day, group, UsageCounts(*counts)) for day, group, *counts in rows]

    def close(self) -> None:
        if self._owned:
            self._database.close()


def open_usage_store(database_url: str) -> ReportStore:
    """A usage store with a database of its own (the CLI's): closing the store closes it."""
    from gateway.databases import open_cli_database
    from gateway.usage.postgres import PostgresUsageStore

    database = open_cli_database(database_url)
    if isinstance(database, Database):
        return SqliteUsageStore(database, owned=True)
    return PostgresUsageStore(database, owned=True)


def _where(since: str | None, until: str | None, key_name: str | None) -> tuple[str, list[str]]:
    clauses, parameters = [], []
    for clause, value in (("day >= ?", since), ("day <= ?", until), ("key_name = ?", key_name)):
        if value is not None:
            clauses.append(clause)
            parameters.append(value)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), parameters
