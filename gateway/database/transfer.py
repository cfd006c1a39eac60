"""Copying one gateway database into another (SQLite to PostgreSQL to switch an install to
several replicas, or back): keys (their digests: secrets were never stored), Ollama public keys,
usage and the metadata, row for row, at the schema both are migrated to.

Idempotent: a row is written only when the target's differs (an upsert whose update is skipped
for an equal row), so a second run changes nothing and reports 0 written. A usage count becomes
the larger of the two, never their sum: copying twice counts nothing twice, and never lowers a
count the target has grown since. Otherwise the source wins. Rows only in the target are left
alone. Keys
written are stamped by the target's own triggers (and announced, on PostgreSQL), so gateways
already running on the target load them. Must not know the stores' record types.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.database import AnyDatabase
from gateway.database.sqlite import Database, transaction

# Usage rows read and written per transaction.
BATCH = 5000


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    key: tuple[str, ...]  # the primary key: conflicts, and the order usage is read in
    order: str  # how rows are read (public keys: in the order they were added)
    paged: bool = False
    # Columns that keep the larger of the target's and the source's value.
    larger: tuple[str, ...] = ()


_COUNTS = ("requests", "prompt_tokens", "completion_tokens", "errors")

# In the order their references need. The keys' change counter (meta) is handled on its own.
TABLES = (
    Table("keys", ("id",), "id"),
    Table("ollama_keys", ("blob",), "added_at, blob"),
    Table("usage", ("day", "key_id", "model"), "day, key_id, model", paged=True, larger=_COUNTS),
    # The roll-ups the reports read (a copy of the sums: cheaper than summing ``usage`` again).
    Table("usage_key_days", ("key_name", "day"), "key_name, day", paged=True, larger=_COUNTS),
    Table("usage_model_days", ("day", "model"), "day, model", paged=True, larger=_COUNTS),
)
# Columns each database keeps for itself: PostgreSQL's insertion order of public keys, and the
# keys' change stamps (the target's triggers stamp what the copy writes, and announce it).
_OWN_COLUMNS = {"rowid", "change"}


@dataclass(frozen=True, slots=True)
class Copied:
    table: str
    rows: int  # read from the source
    changed: int  # written to the target: new, or different there


def copy_database(source: AnyDatabase, target: AnyDatabase) -> list[Copied]:
    """Copy every table; returns a count per table (and the change counter as ``meta``)."""
    counts = [_copy_table(source, target, table) for table in TABLES]
    counts.append(_copy_counter(source, target))
    return counts


def _copy_table(source: AnyDatabase, target: AnyDatabase, table: Table) -> Copied:
    columns = [column for column in _columns(source, table.name) if column in set(_columns(target, table.name))]
    rows = changed = 0
    for batch in _read(source, table, columns):
        rows += len(batch)
        changed += _write(target, table, columns, batch)
    return Copied(table.name, rows, changed)


def _read(database: AnyDatabase, table: Table, columns: list[str]) -> Iterator[list[tuple[Any, ...]]]:
    """The table's rows, a batch at a time (usage: paged by its key, so no batch holds a year)."""
    select = f"SELECT {', '.join(columns)} FROM {table.name}"  # noqa: S608
    if not table.paged:
        yield database.run(lambda connection: list(connection.execute(f"{select} ORDER BY {table.order}").fetchall()))
        return
    mark = _mark(database)
    after: tuple[Any, ...] | None = None
    positions = [columns.index(column) for column in table.key]
    while True:
        where = "" if after is None else f" WHERE ({', '.join(table.key)}) > ({', '.join([mark] * len(table.key))})"
        query = f"{select}{where} ORDER BY {table.order} LIMIT {BATCH}"

        def page(connection: Any, query: str = query, after: tuple[Any, ...] | None = after) -> list[tuple[Any, ...]]:
            return list(connection.execute(query, after or ()).fetchall())

        batch = database.run(page)
        if not batch:
            return
        yield batch
        if len(batch) < BATCH:
            return
        after = tuple(batch[-1][position] for position in positions)


def _write(database: AnyDatabase, table: Table, columns: list[str], rows: list[tuple[Any, ...]]) -> int:
    """Upsert ``rows``; returns how many were new or different."""
    if not rows:
        return 0
    mark = _mark(database)
    others = [column for column in columns if column not in table.key]
    sqlite = isinstance(database, Database)
    differs = "IS NOT" if sqlite else "IS DISTINCT FROM"
    larger = "MAX" if sqlite else "GREATEST"
    values = {
        column: f"{larger}({table.name}.{column}, excluded.{column})"
        if column in table.larger
        else f"excluded.{column}"
        for column in others
    }
    current = ", ".join(f"{table.name}.{column}" for column in others)
    statement = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))}) "  # noqa: S608
        f"ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET "
        + ", ".join(f"{column} = {value}" for column, value in values.items())
        + f" WHERE ({current}) {differs} ({', '.join(values.values())})"
    )

    def upsert(connection: Any) -> int:
        with _transaction(database, connection):
            cursor = connection.cursor()
            try:
                # Summed over the rows: an update skipped for an equal row counts none.
                cursor.executemany(statement, rows)
                return int(cursor.rowcount)
            finally:
                cursor.close()

    changed: int = database.run(upsert)
    return changed


def _copy_counter(source: AnyDatabase, target: AnyDatabase) -> Copied:
    """The keys' change counter: at least the source's (it only ever grows)."""
    select = "SELECT value FROM meta WHERE name = 'keys_version'"
    theirs = source.run(lambda connection: _value(connection, select))
    mark = _mark(target)

    def update(connection: Any) -> int:
        with _transaction(target, connection):
            ours = _value(connection, select)
            wanted = max(ours, theirs)
            if wanted != ours:
                connection.execute(f"UPDATE meta SET value = {mark} WHERE name = 'keys_version'", (wanted,))  # noqa: S608
            return int(wanted != ours)

    return Copied("meta", 1, target.run(update))


def _columns(database: AnyDatabase, table: str) -> list[str]:
    if isinstance(database, Database):
        rows = database.run(lambda connection: connection.execute(f"PRAGMA table_info({table})").fetchall())
        return [str(row[1]) for row in rows if row[1] not in _OWN_COLUMNS]
    rows = database.run(
        lambda connection: connection.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
            (table,),
        ).fetchall()
    )
    return [str(row[0]) for row in rows if row[0] not in _OWN_COLUMNS]


def _value(connection: Any, select: str) -> int:
    row = connection.execute(select).fetchone()
    return int(row[0])


def _mark(database: AnyDatabase) -> str:
    return "?" if isinstance(database, Database) else "%s"


def _transaction(database: AnyDatabase, connection: Any) -> Any:
    return transaction(connection) if isinstance(database, Database) else connection.transaction()
