"""Token usage in the embedded SQLite database: batched upserts, and the report query."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.database import connect


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

    def writable(self) -> bool: ...

    def close(self) -> None: ...


Grouping = Literal["key", "model", "day"]
_GROUP_COLUMN = {"key": "key_name", "model": "model", "day": "day"}


class SqliteUsageStore:
    def __init__(self, database_url: str) -> None:
        self._connection = connect(database_url)
        self._lock = threading.Lock()

    def add(self, rows: Mapping[UsageKey, UsageCounts]) -> None:
        if not rows:
            return
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._connection.executemany(
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
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise

    def writable(self) -> bool:
        """Can a write transaction start (the database is not read-only or locked up)?"""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            self._connection.execute("ROLLBACK")
        return True

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
        with self._lock:
            rows: Iterable[tuple[str, int, int, int, int]] = self._connection.execute(
                f"SELECT {column}, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(errors) "  # noqa: S608
                f"FROM usage {where} GROUP BY {column} ORDER BY {column}",
                parameters,
            ).fetchall()
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
        with self._lock:
            rows: Iterable[tuple[str, str, int, int, int, int]] = self._connection.execute(
                f"SELECT day, {column}, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), "  # noqa: S608
                f"SUM(errors) FROM usage {where} GROUP BY day, {column} ORDER BY day, {column}",
                parameters,
            ).fetchall()
        return [(day, group, UsageCounts(*counts)) for day, group, *counts in rows]

    def close(self) -> None:
        self._connection.close()


def _where(since: str | None, until: str | None, key_name: str | None) -> tuple[str, list[str]]:
    clauses, parameters = [], []
    for clause, value in (("day >= ?", since), ("day <= ?", until), ("key_name = ?", key_name)):
        if value is not None:
            clauses.append(clause)
            parameters.append(value)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), parameters
