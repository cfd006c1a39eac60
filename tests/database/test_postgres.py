"""The PostgreSQL database itself: its connections bounded by the pool size, statements by the
timeout, the password masked wherever the URL is shown, migrations run once by replicas that
start together, and the one line a gateway without the driver prints."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import pytest

from gateway.cli.main import main
from gateway.database.postgres import EXTRA_MISSING, PostgresDatabase, redacted
from gateway.database.postgres import log as postgres_log
from gateway.database.sqlite import MIGRATIONS, DatabaseError
from gateway.errors import DatabaseUnavailable
from gateway.settings import masked
from gateway.usage.accounting import UsageLedger
from gateway.usage.postgres import PostgresUsageStore
from gateway.usage.store import UsageCounts
from tests.database.test_outage import logged
from tests.database.test_stores import run_together
from tests.postgres_server import PostgresServer
from tests.records import make_record

pytestmark = pytest.mark.timeout(30)


def test_the_password_is_masked_in_the_user_part_and_the_options() -> None:
    assert redacted("postgresql://gw:s3cr%40t@db:5432/gateway?sslmode=verify-full&password=other") == (
        "postgresql://gw:***@db:5432/gateway?sslmode=verify-full&password=***"
    )
    assert redacted("postgres://db/gateway?sslmode=require") == "postgres://db/gateway?sslmode=require"
    assert masked("postgresql://gw:s3cret@db/gateway") == "postgresql://gw:***@db/gateway"


def test_config_shows_the_database_settings_with_the_password_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql://gw:s3cret@db:5432/gateway?sslmode=require")
    monkeypatch.setenv("GATEWAY_DATABASE_POOL_SIZE", "8")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert lines["GATEWAY_DATABASE_URL"] == ["env", "postgresql://gw:***@db:5432/gateway?sslmode=require"]
    assert lines["GATEWAY_DATABASE_POOL_SIZE"] == ["env", "8"]
    assert lines["GATEWAY_DATABASE_STATEMENT_TIMEOUT"] == ["default", "5.0"]
    assert "s3cret" not in out


def test_an_unreachable_server_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    # Port 1: nothing listens there.
    url = "postgresql://gw:s3cret@127.0.0.1:1/gateway?password=s3cret"
    monkeypatch.setenv("GATEWAY_DATABASE_URL", url)
    assert main(["keys", "list"]) == 2
    err = capsys.readouterr().err
    named, refused = err.splitlines()
    assert named == "ollama-gateway: database postgresql://gw:***@127.0.0.1:1/gateway?password=***"
    assert refused.startswith("ollama-gateway: cannot use the database postgresql://gw:***@127.0.0.1:1/gateway?")
    assert refused.endswith("Connection refused Is the server running on that host and accepting TCP/IP connections?")
    assert "s3cret" not in err


def test_statements_are_bounded_by_the_timeout(postgres_url: str) -> None:
    database = PostgresDatabase(postgres_url, statement_timeout=0.2)
    try:
        with pytest.raises(DatabaseUnavailable, match="canceling statement due to statement timeout"):
            database.run(lambda connection: connection.execute("SELECT pg_sleep(5)"))
        # The connection is usable again afterwards.
        assert database.run(lambda connection: connection.execute("SELECT 1").fetchone()) == (1,)
    finally:
        database.close()


async def test_connections_are_bounded_by_the_pool_size(postgres_url: str) -> None:
    database = PostgresDatabase(postgres_url, pool_size=3)
    await database.call(database.open)  # as the server opens it: on one of its threads
    name = postgres_url.rpartition("/")[2]

    def busy() -> int:
        """Holds its connection a moment (server-side), then counts the database's connections."""
        row = database.run(
            lambda connection: connection.execute(
                "SELECT pg_sleep(0.05), count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND backend_type = 'client backend'",
                (name,),
            ).fetchone()
        )
        assert row is not None
        return int(row[1])

    try:
        # Twelve at once: three run, the rest wait for a thread; none opens a fourth connection.
        seen = await asyncio.gather(*(database.call(busy) for _ in range(12)))
        assert max(seen) == 3
    finally:
        await database.aclose()


def test_replicas_starting_together_migrate_once(shared_postgres: PostgresServer) -> None:
    url = shared_postgres.url(shared_postgres.new_database())
    databases = [PostgresDatabase(url, pool_size=1) for _ in range(4)]
    try:
        run_together(*(database.open for database in databases))
        rows = databases[0].run(lambda connection: connection.execute("SELECT version FROM schema_version").fetchall())
        assert rows == [(len(MIGRATIONS),)]
    finally:
        for database in databases:
            database.close()


def test_without_the_driver_a_postgresql_url_fails_in_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed: importing it fails
    with pytest.raises(DatabaseError, match=r"install the gateway with its postgres extra"):
        PostgresDatabase("postgresql://gw@db/gateway")
    assert "\n" not in EXTRA_MISSING


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not-committed"])
async def test_a_flush_whose_outcome_was_lost_is_counted_once(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    """The connection breaks as a flush commits: the ledger cannot tell whether it went in, keeps
    the counts and flushes them again with what came since. Either way, each request counts once."""
    database = PostgresDatabase(postgres_url)
    store = PostgresUsageStore(database)
    ledger = UsageLedger(lambda: store, flush_interval=3600)
    await ledger.start()
    try:
        ledger(make_record(prompt_tokens=10, completion_tokens=1))
        ledger(make_record(prompt_tokens=20, completion_tokens=2))
        real = database.run

        def lost(work: Any, **options: Any) -> Any:
            if committed:
                real(work, **options)
            raise DatabaseUnavailable("server closed the connection unexpectedly")

        monkeypatch.setattr(database, "run", lost)
        await ledger.flush()
        monkeypatch.undo()
        ledger(make_record(prompt_tokens=40, completion_tokens=4))
        await ledger.flush()
        assert store.report(by="key") == [("alice", UsageCounts(3, 70, 7, 0))]
        assert store.report(by="model") == [("llama3.2", UsageCounts(3, 70, 7, 0))]
    finally:
        await ledger.close()
        database.close()


async def test_change_notices_stopped_and_back_are_told_once_and_caught_up(postgres_url: str) -> None:
    """The listening connection cut by the server: one line when notices stop, one when they are
    back, and ``reconnected`` (the caller's catch-up) called then and only then."""
    database = PostgresDatabase(postgres_url)
    arrived, back = asyncio.Event(), asyncio.Event()
    reconnects = 0

    def reconnected() -> None:
        nonlocal reconnects
        reconnects += 1
        back.set()

    def command(sql: str) -> None:
        database.run(lambda connection: connection.execute(sql))

    async def notified() -> None:
        # The LISTEN may not be in place yet: notify until one arrives (bounded).
        arrived.clear()
        for _ in range(100):
            await asyncio.to_thread(command, "NOTIFY test_notices, 'changed'")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), 0.1)
                return
        raise AssertionError("no notice arrived")

    with logged(postgres_log.name) as (_, lines):
        listen = database.listen("test_notices", lambda _: arrived.set(), reconnected=reconnected)
        listening = asyncio.create_task(listen)
        try:
            await notified()
            assert reconnects == 0  # the first connection is no reconnection
            await asyncio.to_thread(
                command,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
            )
            await asyncio.wait_for(back.wait(), 20)
            await notified()
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
            database.close()
    assert reconnects == 1
    told = [message for _, message in lines.lines if "change notices" in message]
    assert len(told) == 2, told
    assert told[0].startswith(f"change notices from the database {database.where} stopped (")
    assert told[1] == f"change notices from the database {database.where} are back"
