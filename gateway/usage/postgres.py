"""Token usage in PostgreSQL, written by every replica: each flush adds its counts to the rows as
atomic increments (``INSERT … ON CONFLICT DO UPDATE SET x = x + excluded.x``, one statement, so
one transaction), so concurrent flushes from several replicas sum exactly; and the report
queries, as in SQLite."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from gateway.postgres import PostgresDatabase
from gateway.usage.store import Grouping, UsageCounts, UsageKey

if TYPE_CHECKING:
    import psycopg

    Connection = psycopg.Connection[Any]

_GROUP_COLUMN = {"key": "key_name", "model": "model", "day": "day"}
# One statement for a whole batch (arrays unnested into rows): a round trip per flush, not per
# row. The rows go in key order on every replica, so two flushes touching the same rows wait for
# each other instead of deadlocking.
_UPSERT = (
    "INSERT INTO usage (day, key_id, key_name, model, requests, prompt_tokens, completion_tokens, errors) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]) "
    "ON CONFLICT (day, key_id, model) DO UPDATE SET "
    "requests = usage.requests + excluded.requests, "
    "prompt_tokens = usage.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = usage.completion_tokens + excluded.completion_tokens, "
    "errors = usage.errors + excluded.errors, key_name = excluded.key_name"
)


class PostgresUsageStore:
    """Usage in ``database``; closes it on ``close`` only when ``owned`` (the CLI's own)."""

    def __init__(self, database: PostgresDatabase, *, owned: bool = False) -> None:
        self._database = database
        self._owned = owned

    def add(self, rows: Mapping[UsageKey, UsageCounts]) -> None:
        if not rows:
            return
        ordered = sorted(rows.items(), key=lambda item: (item[0].day, item[0].key_id, item[0].model))
        columns = list(
            zip(
                *(
                    (k.day, k.key_id, k.key_name, k.model, c.requests, c.prompt_tokens, c.completion_tokens, c.errors)
                    for k, c in ordered
                ),
                strict=True,
            )
        )

        def upsert(connection: Connection) -> None:
            connection.execute(_UPSERT, [list(column) for column in columns])

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
        rows = self._database.run(
            lambda connection: connection.execute(
                f"SELECT {column}, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(errors) "  # noqa: S608
                f'FROM usage {where} GROUP BY {column} ORDER BY {column} COLLATE "C"',
                parameters,
            ).fetchall()
        )
        return [(str(group), _counts(counts)) for group, *counts in rows]

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
        rows = self._database.run(
            lambda connection: connection.execute(
                f"SELECT day, {column}, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), "  # noqa: S608
                f'SUM(errors) FROM usage {where} GROUP BY day, {column} ORDER BY day, {column} COLLATE "C"',
                parameters,
            ).fetchall()
        )
        return [(str(day), str(group), _counts(counts)) for day, group, *counts in rows]

    def close(self) -> None:
        if self._owned:
            self._database.close()


def _counts(sums: list[Any]) -> UsageCounts:
    # SUM of a BIGINT is a NUMERIC in PostgreSQL: whole numbers, as ints.
    return UsageCounts(*(int(value) for value in sums))


def _where(since: str | None, until: str | None, key_name: str | None) -> tuple[str, list[str]]:
    clauses, parameters = [], []
    for clause, value in (("day >= %s", since), ("day <= %s", until), ("key_name = %s", key_name)):
        if value is not None:
            clauses.append(clause)
            parameters.append(value)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), parameters
