"""The database a URL names: SQLite for ``sqlite:///…`` (one machine), PostgreSQL for
``postgresql://…`` or ``postgres://…`` (several replicas). Only the chosen backend's driver is
imported. Must not know the stores above it."""

from __future__ import annotations

from typing import TypeAlias

from gateway.database.postgres import (
    DEFAULT_POOL_SIZE,
    DEFAULT_STATEMENT_TIMEOUT,
    PostgresDatabase,
    is_postgres,
    redacted,
)
from gateway.database.sqlite import CLI_BUSY_TIMEOUT, Database

AnyDatabase: TypeAlias = Database | PostgresDatabase

# The CLI runs one statement at a time, and may wait longer than a request would.
CLI_POOL_SIZE = 1


def open_database(
    database_url: str,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
) -> AnyDatabase:
    """The server's database (not opened yet)."""
    if is_postgres(database_url):
        return PostgresDatabase(database_url, pool_size=pool_size, statement_timeout=statement_timeout)
    return Database(database_url)


def open_cli_database(database_url: str) -> AnyDatabase:
    """A command's own database, opened (migrated): it waits longer than the server would."""
    database: AnyDatabase
    if is_postgres(database_url):
        database = PostgresDatabase(database_url, pool_size=CLI_POOL_SIZE, statement_timeout=CLI_BUSY_TIMEOUT)
    else:
        database = Database(database_url, busy_timeout=CLI_BUSY_TIMEOUT)
    database.open()
    return database


def describe(database: AnyDatabase) -> str:
    """How logs and messages name it: the file's path, or the URL with its password masked."""
    return str(database.path) if isinstance(database, Database) else database.where


__all__ = ["AnyDatabase", "describe", "is_postgres", "open_cli_database", "open_database", "redacted"]
