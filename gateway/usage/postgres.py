"""Token usage in PostgreSQL, written by every replica: each flush adds its counts to ``usage``
and to the two roll-ups as atomic increments (``INSERT … ON CONFLICT DO UPDATE SET x = x +
excluded.x``), one statement per table in one transaction, so concurrent flushes from several
replicas sum exactly.

Nothing is counted twice when a connection breaks while a flush commits: each batch records its
id in ``usage_batches`` in the same transaction, and a batch whose outcome is unknown (the
flush raised) is looked up before the next write. Found, it was committed: its counts, which
the ledger has put back into the next batch, are taken out again; not found, it was not.

The report queries are SQLite's store's (``store.py``), run through a connection taking their
placeholders, sorted by code point and read from one snapshot."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.database.postgres import PostgresDatabase, Qmarks
from gateway.errors import DatabaseFailed
from gateway.usage.store import SqliteUsageStore, UsageCounts, UsageKey, rollups

if TYPE_CHECKING:
    import psycopg

    Connection = psycopg.Connection[Any]

T = TypeVar("T")
# How long a batch's id is kept (seconds): longer than any outage a replica rides out in memory.
BATCHES_KEPT = 86_400.0
_COUNTS = ("requests", "prompt_tokens", "completion_tokens", "errors")


def _upsert(table: str, identity: tuple[str, ...], latest: tuple[str, ...] = ()) -> str:
    """A whole batch for ``table`` in one statement (column arrays unnested into rows), each row's
    counts added to the stored row with the same ``identity``."""
    columns = (*identity, *latest, *_COUNTS)
    arrays = ", ".join([*("%s::text[]" for _ in (*identity, *latest)), *("%s::bigint[]" for _ in _COUNTS)])
    updates = [
        *(f"{column} = {table}.{column} + excluded.{column}" for column in _COUNTS),
        *(f"{column} = excluded.{column}" for column in latest),
    ]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "  # noqa: S608
        f"ON CONFLICT ({', '.join(identity)}) DO UPDATE SET {', '.join(updates)}"
    )


_ADD_USAGE = _upsert("usage", ("day", "key_id", "model"), ("key_name",))
_ADD_KEY_DAY = _upsert("usage_key_days", ("key_name", "day"))
_ADD_MODEL_DAY = _upsert("usage_model_days", ("day", "model"))


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows (sorted: every replica locks rows in one order, so two flushes wait, never deadlock)
    as one list per column."""
    return [list(column) for column in zip(*sorted(rows), strict=True)]


class PostgresUsageStore(SqliteUsageStore):
    """Usage in ``database``; closes it on ``close`` only when ``owned`` (the CLI's own)."""

    def __init__(self, database: PostgresDatabase, *, owned: bool = False) -> None:
        self._postgres = database
        self._owned = owned
        # The last batch whose flush raised: committed or not, the database knows.
        self._unsure: tuple[str, Mapping[UsageKey, UsageCounts]] | None = None

    def add(self, rows: Mapping[UsageKey, UsageCounts]) -> None:
        if self._unsure is not None:
            rows = self._settle(rows, *self._unsure)
        if not rows:
            return
        batch = uuid.uuid4().hex
        try:
            self._write(batch, rows)
        except DatabaseFailed:
            self._unsure = (batch, rows)
            raise

    def _settle(
        self, rows: Mapping[UsageKey, UsageCounts], batch: str, sent: Mapping[UsageKey, UsageCounts]
    ) -> dict[UsageKey, UsageCounts]:
        """``rows`` without ``sent`` if that batch was committed after all (raises while the
        database cannot say)."""
        found = self._postgres.run(
            lambda connection: connection.execute("SELECT 1 FROM usage_batches WHERE id = %s", (batch,)).fetchone()
        )
        self._unsure = None
        left = {key: UsageCounts(*counts.row()) for key, counts in rows.items()}
        if found is not None:
            for key, counts in sent.items():
                remaining = left.get(key)
                if remaining is not None:
                    remaining.add(UsageCounts(*(-value for value in counts.row())))
            left = {key: counts for key, counts in left.items() if counts.row() != (0, 0, 0, 0)}
        return left

    def _write(self, batch: str, rows: Mapping[UsageKey, UsageCounts]) -> None:
        per_key_day, per_model_day = rollups(rows)
        batches = [
            (_ADD_USAGE, _columns([(k.day, k.key_id, k.model, k.key_name, *c.row()) for k, c in rows.items()])),
            (_ADD_KEY_DAY, _columns([(*group, *c.row()) for group, c in per_key_day.items()])),
            (_ADD_MODEL_DAY, _columns([(*group, *c.row()) for group, c in per_model_day.items()])),
        ]

        def upsert(connection: Connection) -> None:
            now = time.time()
            with connection.transaction():
                connection.execute("INSERT INTO usage_batches (id, at) VALUES (%s, %s)", (batch, now))
                for statement, columns in batches:
                    connection.execute(statement, columns)
                connection.execute("DELETE FROM usage_batches WHERE at < %s", (now - BATCHES_KEPT,))

        self._postgres.run(upsert)

    def _run(self, work: Callable[[Any], T]) -> T:
        return self._postgres.run(lambda connection: work(Qmarks(connection)))

    def _by(self, column: str) -> str:
        return f'{column} COLLATE "C"'

    @contextlib.contextmanager
    def _snapshot(self, connection: Any) -> Iterator[None]:
        # The chart's queries see the same rows, whatever the other replicas write meanwhile.
        with connection.connection.transaction():
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield

    def close(self) -> None:
        if self._owned:
            self._postgres.close()
