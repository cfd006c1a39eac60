"""The embedded SQLite database: one connection per process, its own thread, and the file it
belongs to.

WAL mode lets the CLI write while the server reads and writes; a busy timeout makes a writer
wait for the other instead of failing, for a bounded time. The schema version lives in
``PRAGMA user_version`` and every migration below runs exactly once, in order, when a file is
opened.

A ``Database`` is the only way to the file: every statement runs under its lock (a connection is
never used by two threads at once), on its own single worker thread when called from the event
loop (so a locked or slow database can hold up database work only, never the default executor
that parses request bodies), and only while the file at the configured path is still the file
that was opened. Before each use it compares the path's device and inode with the open file's:

* replaced (a backup moved into place): the old file's write-ahead log is folded into the old
  file, the connection closed, and the log and index files it left at the path removed, before
  the new file is opened (SQLite itself leaves them behind for a moved file, and the new file
  would read them as its own); the new file is then opened and its ``generation`` counted, so the
  keyring reloads every key from it;
* gone (deleted or moved away): nothing is written to the unlinked file and no empty file is
  created in its place; every use fails with ``DatabaseGone`` until a file is back at the path.

Each change of state is logged once.

SQLite's errors are translated here, once, into the gateway's error tree (``DatabaseUnavailable``
when the database cannot be used just now, ``DatabaseFailed`` for any other failure, each keeping
SQLite's words as its reason): nothing above a ``Database`` sees a ``sqlite3.Error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

from gateway.errors import DatabaseFailed, DatabaseUnavailable

T = TypeVar("T")

# How long a statement waits for another writer (the CLI, another replica, a backup) before it
# fails. The server's work is batched and retried, so it need not wait long; the CLI waits longer.
SERVER_BUSY_TIMEOUT = 2.0
CLI_BUSY_TIMEOUT = 10.0

log = logging.getLogger("gateway.database")

# Written out by hand, never derived: a migration is history, and must read tomorrow as it ran
# today. Each is written once per backend, side by side (SQLite's and PostgreSQL's types and
# syntax differ), and both backends number them from this one list. The keys table has a column
# per limit of ``gateway.keys.store.Limits``, named as the limit: a new limit is a new migration
# adding its column (as 3 did for weight).


class Migration(NamedTuple):
    sqlite: str
    postgres: str


MIGRATIONS: tuple[Migration, ...] = (
    # 1: API keys, and a counter the server polls to notice changes made elsewhere (the CLI, another server).
    Migration(
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
        """
        CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            digest TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            last_used_at DOUBLE PRECISION,
            expires_at DOUBLE PRECISION,
            revoked INTEGER NOT NULL DEFAULT 0,
            scopes TEXT NOT NULL,
            models TEXT NOT NULL,
            rpm BIGINT,
            tpm BIGINT,
            tpd BIGINT,
            concurrency BIGINT
        );
        CREATE TABLE meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
        INSERT INTO meta (name, value) VALUES ('keys_version', 0);
        """,
    ),
    # 2: token usage per key, model and UTC day.
    Migration(
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
        """
        CREATE TABLE usage (
            day TEXT NOT NULL,
            key_id TEXT NOT NULL,
            key_name TEXT NOT NULL,
            model TEXT NOT NULL,
            requests BIGINT NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            errors BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (day, key_id, model)
        );
        CREATE INDEX usage_key ON usage (key_name, day);
        """,
    ),
    # 3: a key's share of the upstream when requests queue.
    Migration(
        """
        ALTER TABLE keys ADD COLUMN weight INTEGER;
        """,
        """
        ALTER TABLE keys ADD COLUMN weight BIGINT;
        """,
    ),
    # 4: one row that readiness checks rewrite, to prove a write reaches the disk.
    Migration(
        """
        CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
        """,
        """
        CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at DOUBLE PRECISION NOT NULL);
        """,
    ),
    # 5: Ollama public keys, each belonging to one key at most (the blob is the identity).
    # PostgreSQL has no rowid: a column of that name keeps the order keys were added in.
    Migration(
        """
        CREATE TABLE ollama_keys (
            blob BLOB PRIMARY KEY,
            key_id TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
            comment TEXT NOT NULL,
            added_at REAL NOT NULL
        );
        CREATE INDEX ollama_keys_key ON ollama_keys (key_id);
        """,
        """
        CREATE TABLE ollama_keys (
            blob BYTEA PRIMARY KEY,
            key_id TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
            comment TEXT NOT NULL,
            added_at DOUBLE PRECISION NOT NULL,
            rowid BIGSERIAL NOT NULL
        );
        CREATE INDEX ollama_keys_key ON ollama_keys (key_id);
        """,
    ),
    # 6: a change feed. Every write to a key (from the gateway, the CLI, or by hand) stamps its row
    # with the counter's new value, moved inside the write's transaction, so stamps commit in their
    # order; a deleted key leaves its id and stamp behind. The keyring then reads only the rows
    # stamped since it last looked. Recording last use is not a change. PostgreSQL's triggers also
    # announce the changed key's id on the channel ``gateway_keys`` (delivered at commit), so
    # every replica listening looks at once.
    Migration(
        """
        ALTER TABLE keys ADD COLUMN change INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX keys_change ON keys (change);
        CREATE TABLE removed_keys (id TEXT PRIMARY KEY, change INTEGER NOT NULL);
        CREATE INDEX removed_keys_change ON removed_keys (change);
        CREATE TRIGGER keys_created AFTER INSERT ON keys BEGIN
            UPDATE meta SET value = value + 1 WHERE name = 'keys_version';
            UPDATE keys SET change = (SELECT value FROM meta WHERE name = 'keys_version') WHERE id = NEW.id;
        END;
        CREATE TRIGGER keys_changed AFTER UPDATE ON keys
        WHEN NEW.change IS OLD.change AND NEW.last_used_at IS OLD.last_used_at BEGIN
            UPDATE meta SET value = value + 1 WHERE name = 'keys_version';
            UPDATE keys SET change = (SELECT value FROM meta WHERE name = 'keys_version') WHERE id = NEW.id;
        END;
        CREATE TRIGGER keys_removed AFTER DELETE ON keys BEGIN
            UPDATE meta SET value = value + 1 WHERE name = 'keys_version';
            INSERT OR REPLACE INTO removed_keys (id, change)
                VALUES (OLD.id, (SELECT value FROM meta WHERE name = 'keys_version'));
        END;
        """,
        """
        ALTER TABLE keys ADD COLUMN change BIGINT NOT NULL DEFAULT 0;
        CREATE INDEX keys_change ON keys (change);
        CREATE TABLE removed_keys (id TEXT PRIMARY KEY, change BIGINT NOT NULL);
        CREATE INDEX removed_keys_change ON removed_keys (change);
        CREATE FUNCTION keys_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE meta SET value = value + 1 WHERE name = 'keys_version' RETURNING value INTO NEW.change;
            PERFORM pg_notify('gateway_keys', NEW.id);
            RETURN NEW;
        END $$;
        CREATE TRIGGER keys_created BEFORE INSERT ON keys FOR EACH ROW EXECUTE FUNCTION keys_stamp();
        CREATE TRIGGER keys_changed BEFORE UPDATE ON keys FOR EACH ROW
            WHEN (NEW.change IS NOT DISTINCT FROM OLD.change AND NEW.last_used_at IS NOT DISTINCT FROM OLD.last_used_at)
            EXECUTE FUNCTION keys_stamp();
        CREATE FUNCTION keys_unstamp() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE stamp BIGINT;
        BEGIN
            UPDATE meta SET value = value + 1 WHERE name = 'keys_version' RETURNING value INTO stamp;
            INSERT INTO removed_keys (id, change) VALUES (OLD.id, stamp)
                ON CONFLICT (id) DO UPDATE SET change = excluded.change;
            PERFORM pg_notify('gateway_keys', OLD.id);
            RETURN OLD;
        END $$;
        CREATE TRIGGER keys_removed AFTER DELETE ON keys FOR EACH ROW EXECUTE FUNCTION keys_unstamp();
        """,
    ),
    # 7: usage summed per (key name, day) and per (day, model), kept up to date with every batch
    # written to usage, so that a report over a year reads ~10x fewer rows than usage holds; filled
    # here from the rows already written. WITHOUT ROWID (SQLite's): the rows live in their primary
    # key's order, so a scan reads the sums without a lookup per row (PostgreSQL: its heap rows, with
    # the primary key's index).
    Migration(
        """
        CREATE TABLE usage_key_days (
            key_name TEXT NOT NULL,
            day TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key_name, day)
        ) WITHOUT ROWID;
        CREATE TABLE usage_model_days (
            day TEXT NOT NULL,
            model TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (day, model)
        ) WITHOUT ROWID;
        INSERT INTO usage_key_days (key_name, day, requests, prompt_tokens, completion_tokens, errors)
            SELECT key_name, day, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(errors)
            FROM usage GROUP BY key_name, day;
        INSERT INTO usage_model_days (day, model, requests, prompt_tokens, completion_tokens, errors)
            SELECT day, model, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(errors)
            FROM usage GROUP BY day, model;
        """,
        """
        CREATE TABLE usage_key_days (
            key_name TEXT NOT NULL,
            day TEXT NOT NULL,
            requests BIGINT NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            errors BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (key_name, day)
        );
        CREATE TABLE usage_model_days (
            day TEXT NOT NULL,
            model TEXT NOT NULL,
            requests BIGINT NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            errors BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (day, model)
        );
        INSERT INTO usage_key_days (key_name, day, requests, prompt_tokens, completion_tokens, errors)
            SELECT key_name, day, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(errors)
            FROM usage GROUP BY key_name, day;
        INSERT INTO usage_model_days (day, model, requests, prompt_tokens, completion_tokens, errors)
            SELECT day, model, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(errors)
            FROM usage GROUP BY day, model;
        """,
    ),
    # 8: the usage batches PostgreSQL has committed, a day's worth: a replica whose connection broke
    # while a flush committed looks its batch up here before writing it again, so a commit whose
    # answer was lost is not counted twice. SQLite's commits are local: it has no such doubt.
    Migration(
        "",
        """
        CREATE TABLE usage_batches (id TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL);
        CREATE INDEX usage_batches_at ON usage_batches (at);
        """,
    ),
    # 9: keys by name in code-point order, as the listings page them: PostgreSQL's unique index
    # follows the database's collation, and a page in another order would sort every key.
    Migration("", 'CREATE INDEX keys_name_bytes ON keys (name COLLATE "C");'),
    # 10: an Ollama public key added, changed or removed (by hand too) is a change of the key it
    # belongs to: the key's row is touched, and migration 6's triggers stamp and announce it, so a
    # public key deleted in the database stops signing at the next look, not the next full read.
    Migration(
        """
        CREATE TRIGGER ollama_keys_added AFTER INSERT ON ollama_keys BEGIN
            UPDATE keys SET change = change WHERE id = NEW.key_id;
        END;
        CREATE TRIGGER ollama_keys_changed AFTER UPDATE ON ollama_keys BEGIN
            UPDATE keys SET change = change WHERE id IN (OLD.key_id, NEW.key_id);
        END;
        CREATE TRIGGER ollama_keys_removed AFTER DELETE ON ollama_keys BEGIN
            UPDATE keys SET change = change WHERE id = OLD.key_id;
        END;
        """,
        """
        CREATE FUNCTION ollama_keys_touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP <> 'INSERT' THEN
                UPDATE keys SET change = change WHERE id = OLD.key_id;
            END IF;
            IF TG_OP <> 'DELETE' THEN
                UPDATE keys SET change = change WHERE id = NEW.key_id;
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER ollama_keys_touched AFTER INSERT OR UPDATE OR DELETE ON ollama_keys
            FOR EACH ROW EXECUTE FUNCTION ollama_keys_touch();
        """,
    ),
)


def check_schema(version: int) -> None:
    """A database migrated by a newer gateway is refused: its data may mean what this one cannot read."""
    if version > len(MIGRATIONS):
        raise DatabaseError(
            f"the database's schema is version {version}, newer than this gateway's ({len(MIGRATIONS)}): "
            "run the newer gateway, or restore a backup taken before it migrated"
        )


class Runner(Protocol):
    """Runs blocking database work off the event loop (``Database.call``)."""

    async def __call__(self, work: Callable[[], T], /) -> T: ...


class DatabaseError(Exception):
    """The configured database cannot be this gateway's (an unsupported URL, a newer schema)."""


class DatabaseUnusable(DatabaseError):
    """The file at the configured path cannot be created, opened or written (at start-up)."""


class DatabaseGone(DatabaseUnavailable):
    """No file is at the configured path any more."""


class DatabaseClosed(DatabaseUnavailable):
    """Used after ``close``: a bug in the order of shutdown, reported instead of a crash."""


def sqlite_path(database_url: str) -> Path:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` -> a filesystem path."""
    prefix = "sqlite:///"
    if not database_url.startswith(prefix) or len(database_url) == len(prefix):
        raise DatabaseError(f"unsupported database URL {database_url!r}: expected sqlite:///<path>")
    return Path(database_url[len(prefix) :])


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """SQLite's errors as the gateway's. An operational error (locked past the busy timeout,
    read-only, full, a table missing) means the database cannot be used just now; any other (a
    file that is not a database, a malformed image) is a failure waiting will not mend."""
    try:
        yield
    except sqlite3.OperationalError as error:
        raise DatabaseUnavailable(str(error)) from error
    except sqlite3.Error as error:
        raise DatabaseFailed(str(error)) from error


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; on failure a rollback, but only of a transaction that
    began, so the error raised is the one that happened (not "no transaction is active")."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _hint(path: Path) -> str:
    """Why SQLite could not open or write a file, where its own message does not say."""
    if path.is_file() and not os.access(path, os.W_OK):
        return " (the file is read-only)"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        # Even reads need it in WAL mode: the log and its index live beside the file.
        return f" (its folder {path.parent} is read-only: SQLite keeps its log files beside the database)"
    return ""


def _sidecars(path: Path) -> tuple[Path, Path]:
    """The write-ahead log and its shared-memory index, named after the database file."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


class Database:
    def __init__(self, database_url: str, *, busy_timeout: float = SERVER_BUSY_TIMEOUT) -> None:
        # Absolute from the start: the process may change directory, the file must not change.
        self.path = Path(os.path.abspath(sqlite_path(database_url)))
        self._busy = busy_timeout
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._opened_identity: tuple[int, int] | None = None
        self._sidecars: dict[Path, tuple[int, int] | None] = {}
        self._current_busy = busy_timeout
        self._closed = False
        self._gone = False
        # Counts the files opened: a new one means every key must be read again.
        self.generation = 0
        # Threads start on first use: the CLI's databases never start one.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")

    # Use from any thread.
    def open(self, *, writable: bool = False) -> None:
        """Open (creating the file and its folder if need be) and migrate; with ``writable``, also
        commit a write. ``DatabaseUnusable`` names the path and the reason when that fails."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise self._unusable(f"{self.path.parent} is not a folder") from None
        except OSError as error:
            raise self._unusable(f"cannot create its folder {self.path.parent}: {error.strerror or error}") from None
        try:
            with self._lock, _translated():
                if self._connection is None:
                    self._open(create=True)
            if writable:
                # A read-only file in WAL mode opens, and migrates when it has nothing to do.
                self.heartbeat(busy=self._busy)
        except (DatabaseFailed, DatabaseError) as error:
            raise self._unusable(f"{error}{_hint(self.path)}") from None

    def _unusable(self, reason: str) -> DatabaseUnusable:
        return DatabaseUnusable(f"cannot use the database {self.path}: {reason}")

    def run(self, work: Callable[[sqlite3.Connection], T], *, busy: float | None = None) -> T:
        """``work`` with the connection, under the lock, on the file now at the path. ``busy``
        overrides how long it may wait for another writer. Raises ``DatabaseFailed`` (or the
        ``DatabaseUnavailable`` under it) for every SQLite error, in ``work`` too."""
        with self._lock, _translated():
            connection = self._current()
            wanted = self._busy if busy is None else busy
            if wanted != self._current_busy:
                connection.execute(f"PRAGMA busy_timeout={round(wanted * 1000)}")
                self._current_busy = wanted
            return work(connection)

    @property
    def busy(self) -> bool:
        """Whether a statement is running now."""
        return self._lock.locked()

    def heartbeat(self, *, busy: float) -> None:
        """A real write, committed: proves the file can be written now (not only locked)."""

        def beat(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.execute(
                    "INSERT INTO heartbeat (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                    (time.time(),),
                )

        self.run(beat, busy=busy)

    def close(self) -> None:
        """Waits for a statement that is running, then closes for good."""
        with self._lock:
            self._closed = True
            if self._connection is not None:
                self._connection.close()
                self._connection = None
        self.executor.shutdown(wait=False)

    # Use from the event loop: on the database's own thread.
    async def call(self, work: Callable[[], T]) -> T:
        """Run ``work`` (which uses this database) on the database's thread, after what is queued."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    async def aclose(self) -> None:
        """``close`` on the database's thread, after the work queued before it; returns once that
        thread has ended (until then it holds the last work item, and with it this database)."""
        await self.call(self.close)
        await asyncio.to_thread(self.executor.shutdown, wait=True)

    def _current(self) -> sqlite3.Connection:
        if self._closed:
            raise DatabaseClosed(f"the database at {self.path} is closed")
        identity = _identity(self.path)
        if self._connection is not None and identity == self._opened_identity:
            return self._connection
        if self._connection is not None:
            self._let_go(self._connection)
            self._connection = None
        if identity is None:
            if not self._gone:
                self._gone = True
                log.error(
                    "the database file %s is gone: not ready; usage is kept in memory and the keys "
                    "already loaded are served until a database file is back at that path",
                    self.path,
                )
            raise DatabaseGone(f"no database file at {self.path}")
        was_gone, self._gone = self._gone, False
        connection = self._open(create=False)
        log.warning(
            "the database file %s %s: reopened it; its keys apply from now on",
            self.path,
            "is back" if was_gone else "was replaced",
        )
        return connection

    def _let_go(self, connection: sqlite3.Connection) -> None:
        """Close the connection to a file that was replaced or removed. SQLite folds its log into
        a file on close only while the file is still at its path, so that is done here first (the
        old file, wherever it went, is whole); then the log and index files it left at the path
        are removed, so the file now at the path never reads them as its own."""
        with contextlib.suppress(sqlite3.Error):
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()
        for sidecar, identity in self._sidecars.items():
            if identity is not None and _identity(sidecar) == identity:
                sidecar.unlink(missing_ok=True)

    def _open(self, *, create: bool) -> sqlite3.Connection:
        for _ in range(3):
            before = _identity(self.path)
            # mode=rw: reopening never creates an empty file where the operator removed one.
            uri = self.path.as_uri() + ("?mode=rwc" if create else "?mode=rw")
            connection = sqlite3.connect(
                uri, uri=True, timeout=self._busy, isolation_level=None, check_same_thread=False
            )
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.execute("PRAGMA foreign_keys=ON")
                migrate(connection)
            except BaseException:
                connection.close()
                raise
            after = _identity(self.path)
            if after is not None and (before is None or before == after):
                self._connection = connection
                self._opened_identity = after
                # Open while this connection is: they are this file's until it is let go.
                self._sidecars = {sidecar: _identity(sidecar) for sidecar in _sidecars(self.path)}
                self._current_busy = self._busy
                self.generation += 1
                return connection
            connection.close()  # swapped while opening: open what is there now
        raise DatabaseUnavailable(f"the database file {self.path} keeps changing while it is opened")


def migrate(connection: sqlite3.Connection) -> None:
    with transaction(connection):
        version: int = connection.execute("PRAGMA user_version").fetchone()[0]
        check_schema(version)
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in _statements(migration.sqlite):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version={number}")


def _statements(script: str) -> Iterator[str]:
    """A script's statements; a trigger's body (``BEGIN ... END``) holds semicolons of its own."""
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n;"):
                yield statement
            statement = ""
