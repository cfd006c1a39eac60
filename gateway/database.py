"""The embedded SQLite database: opening it safely and applying forward migrations.

WAL mode lets the CLI write while the server reads and writes; ``busy_timeout`` makes a writer
wait for the other instead of failing. The schema version lives in ``PRAGMA user_version`` and
every migration below runs exactly once, in order, at start-up.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

MIGRATIONS: tuple[str, ...] = (
    # 1: API keys, and a counter the server polls to notice changes made by the CLI.
    """
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        digest TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_used_at REAL,
        expires_at REAL,
        revoked INTEGER NOT NULL DEFAULT 0,
        scopes TEXT NOT NULL,
        models TEXT NOT NULL,
        rpm INTEGER,
        tpm INTEGER,
        tpd INTEGER,
        concurrency INTEGER
    );
    CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (name, value) VALUES ('keys_version', 0);
    """,
    # 2: token usage per key, model and UTC day.
    """
    CREATE TABLE usage (
        day TEXT NOT NULL,
        key_id TEXT NOT NULL,
        key_name TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, key_id, model)
    );
    CREATE INDEX usage_key ON usage (key_name, day);
    """,
    # 3: a key's share of the upstream when requests queue.
    """
    ALTER TABLE keys ADD COLUMN weight INTEGER;
    """,
)


class DatabaseError(Exception):
    pass


def sqlite_path(database_url: str) -> Path:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` -> a filesystem path."""
    prefix = "sqlite:///"
    if not database_url.startswith(prefix) or len(database_url) == len(prefix):
        raise DatabaseError(f"unsupported database URL {database_url!r}: expected sqlite:///<path>")
    return Path(database_url[len(prefix) :])


def connect(database_url: str) -> sqlite3.Connection:
    path = sqlite_path(database_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=10000")
    connection.execute("PRAGMA foreign_keys=ON")
    migrate(connection)
    return connection


def migrate(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        version: int = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise DatabaseError(f"database schema {version} is newer than this gateway ({len(MIGRATIONS)})")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in filter(str.strip, script.split(";")):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version={number}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
