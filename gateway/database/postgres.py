"""PostgreSQL as the gateway's database, for several replicas sharing keys and usage: a bounded
set of connections, the schema migrated once under a lock, change notices by LISTEN/NOTIFY.

psycopg 3 (the ``postgres`` extra) is imported only when a ``postgresql://`` URL is chosen. Its
synchronous API fits the way the stores already work: every statement runs off the event loop, on
the database's own threads (``run``/``call``, as the SQLite ``Database``), and the CLI uses the
same stores without an event loop. The connections are bounded by the threads: each of the
``pool_size`` worker threads (and a CLI's main thread) holds one connection, opened on first use
and dropped when it breaks, so a server that went away costs one failed connect per use (bounded
by ``CONNECT_TIMEOUT``) and the first use after it returns reconnects, with no background retry
schedule to wait for. Every statement is bounded by the statement timeout.

The password in the URL is never shown: ``where`` is the URL with it masked, and every error
raised from here is scrubbed of it. psycopg's errors are translated here, once, into the
gateway's (``DatabaseUnavailable`` when the server cannot be reached or a statement timed out,
``DatabaseFailed`` otherwise). Must not know: keys, usage, HTTP (the stores write their SQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gateway.database.outage import OutageLog
from gateway.database.sqlite import MIGRATIONS, DatabaseClosed, DatabaseError, DatabaseUnusable, check_schema
from gateway.errors import DatabaseFailed, DatabaseUnavailable

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

SCHEMES = ("postgresql://", "postgres://")
EXTRA_MISSING = (
    "GATEWAY_DATABASE_URL is a PostgreSQL URL, and the PostgreSQL driver is not installed: "
    "install the gateway with its postgres extra (pip install 'ollama-gateway[postgres]')"
)
DEFAULT_POOL_SIZE = 5
DEFAULT_STATEMENT_TIMEOUT = 5.0
# libpq's connect_timeout is whole seconds, at least 2.
CONNECT_TIMEOUT = 3
# One number for every gateway sharing the database: whoever holds it migrates, the others wait.
MIGRATION_LOCK = 0x6F6C6C616D61  # "ollama"
# The channel key changes are announced on; the payload is the changed key's id.
KEYS_CHANNEL = "gateway_keys"
# A listener that lost its connection tries again after this long, then twice as long, up to the cap.
LISTEN_RETRY = 0.5
LISTEN_RETRY_CAP = 5.0

log = logging.getLogger("gateway.database")


class Qmarks:
    """A psycopg connection running statements written with SQLite's ``?`` placeholders, so the
    stores share their SQL between the backends (it holds no other ``?`` and no ``%``)."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.connection.execute(sql.replace("?", "%s"), parameters)


def is_postgres(database_url: str) -> bool:
    return database_url.startswith(SCHEMES)


def redacted(database_url: str) -> str:
    """The URL with its password masked, in the user part and in a ``password=`` option alike."""
    parts = urlsplit(database_url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name == "password" for name, _ in pairs):
            query = urlencode([(name, "***" if name == "password" else value) for name, value in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _secrets(database_url: str) -> list[str]:
    parts = urlsplit(database_url)
    found = [parts.password] if parts.password else []
    found += [value for name, value in parse_qsl(parts.query) if name == "password" and value]
    return found


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise DatabaseError(EXTRA_MISSING) from None
    return psycopg


class PostgresDatabase:
    """Connections to one PostgreSQL database; the same surface as the SQLite ``Database``."""

    def __init__(
        self,
        database_url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> None:
        self._psycopg = _driver()
        self._url = database_url
        self._secrets = _secrets(database_url)
        self.where = redacted(database_url)
        self._statement_timeout = statement_timeout
        self._local = threading.local()
        self._opened: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._running = 0
        # The server's store reads compare it: one database is never swapped under a replica.
        self.generation = 1
        self.executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="gateway-db")

    def __str__(self) -> str:
        return self.where

    # Use from any thread.
    def open(self, *, writable: bool = False) -> None:
        """Connect and migrate (once, whoever else is starting); with ``writable``, also commit a
        write. ``DatabaseUnusable`` names the database (password masked) and the reason."""
        try:
            self.run(self._migrate)
            if writable:
                self.heartbeat(busy=self._statement_timeout)
        except DatabaseError as error:
            raise DatabaseUnusable(str(error)) from None
        except DatabaseFailed as error:
            raise DatabaseUnusable(f"cannot use the database {self.where}: {error}") from None

    def run(self, work: Callable[[psycopg.Connection[Any]], T], *, busy: float | None = None) -> T:
        """``work`` with this thread's connection (autocommit: ``work`` opens its transactions).
        ``busy`` bounds its statements instead of the statement timeout. Raises ``DatabaseFailed``
        (or the ``DatabaseUnavailable`` under it) for every driver error, in ``work`` too."""
        if self._closed:
            raise DatabaseClosed(f"the database {self.where} is closed")
        with self._translated():
            connection = self._connection()
            with self._lock:
                self._running += 1
            try:
                if busy is None:
                    return work(connection)
                with self._timeout(connection, busy):
                    return work(connection)
            except self._psycopg.OperationalError:
                # The connection may be what broke: the next use opens a new one.
                self._drop(connection)
                raise
            finally:
                with self._lock:
                    self._running -= 1

    @property
    def busy(self) -> bool:
        """Whether a statement is running now."""
        return self._running > 0

    def heartbeat(self, *, busy: float) -> None:
        """A real write, committed: proves the database takes writes now."""
        self.run(
            lambda connection: connection.execute(
                "INSERT INTO heartbeat (id, at) VALUES (1, %s) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (time.time(),),
            ),
            busy=busy,
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()
        self.executor.shutdown(wait=False)

    # Use from the event loop.
    async def call(self, work: Callable[[], T]) -> T:
        """Run ``work`` (which uses this database) on one of the database's threads."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    async def aclose(self) -> None:
        """``close`` once the work queued before it has finished."""
        await asyncio.to_thread(self.executor.shutdown, wait=True)
        self.close()

    async def listen(self, channel: str, notice: Callable[[str], None], *, reconnected: Callable[[], None]) -> None:
        """Call ``notice`` with each payload sent on ``channel``, until cancelled. A lost connection
        is opened again (after a growing pause) and ``reconnected`` called, since notices sent
        meanwhile were lost: the caller catches up by reading the store."""
        psycopg = self._psycopg
        pause = LISTEN_RETRY
        outage = OutageLog(log, f"change notices from the database {self.where} are back")
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT
                )
                async with connection:
                    await connection.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
                    if outage.succeeded():
                        reconnected()
                    pause = LISTEN_RETRY
                    async for message in connection.notifies():
                        notice(message.payload)
            except psycopg.Error as error:
                outage.failed(
                    f"change notices from the database {self.where} stopped ({self._reason(error)}):"
                    " polling every refresh until they are back"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, LISTEN_RETRY_CAP)

    def _connection(self) -> psycopg.Connection[Any]:
        connection: psycopg.Connection[Any] | None = getattr(self._local, "connection", None)
        if connection is not None and not connection.closed:
            return connection
        connection = self._psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            options=f"-c statement_timeout={round(self._statement_timeout * 1000)}",
        )
        assert connection is not None
        with self._lock:
            if self._closed:
                connection.close()
                raise DatabaseClosed(f"the database {self.where} is closed")
            self._opened.append(connection)
        self._local.connection = connection
        return connection

    def _drop(self, connection: psycopg.Connection[Any]) -> None:
        self._local.connection = None
        with self._lock, contextlib.suppress(ValueError):
            self._opened.remove(connection)
        connection.close()

    @contextlib.contextmanager
    def _timeout(self, connection: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
        connection.execute("SELECT set_config('statement_timeout', %s, false)", (str(round(seconds * 1000)),))
        try:
            yield
        finally:
            if not connection.closed:
                normal = str(round(self._statement_timeout * 1000))
                connection.execute("SELECT set_config('statement_timeout', %s, false)", (normal,))

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """psycopg's errors as the gateway's: a server that cannot be reached, a connection lost,
        a statement timed out or cancelled: unavailable just now; anything else: a failure."""
        psycopg = self._psycopg
        try:
            yield
        except psycopg.OperationalError as error:
            raise DatabaseUnavailable(self._reason(error)) from None
        except psycopg.Error as error:
            raise DatabaseFailed(self._reason(error)) from None

    def _reason(self, error: Exception) -> str:
        # One line: libpq's messages run over several (a hint on the next).
        return self._scrub(" ".join(str(error).split()) or type(error).__name__)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _migrate(self, connection: psycopg.Connection[Any]) -> None:
        """Every migration not yet applied, in order, in one transaction under an advisory lock:
        replicas starting together wait for whichever came first, then find nothing to do."""
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = connection.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                connection.execute("INSERT INTO schema_version (version) VALUES (0)")
            version = 0 if row is None else int(row[0])
            check_schema(version)
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                # The whole script at once (no parameters: the simple protocol runs several
                # statements, and a function's body keeps its own semicolons).
                connection.execute(migration.postgres)
                connection.execute("UPDATE schema_version SET version = %s", (number,))
            if version < len(MIGRATIONS):
                log.info("migrated the database %s to schema %d", self.where, len(MIGRATIONS))
