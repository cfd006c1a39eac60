"""Filling a gateway's database for the scale scenario: many keys, a long usage history.

Fast and bounded: keys go in with one multi-row INSERT transaction into the tables the gateway's
own migrations created (100,000 keys in about a second, not 100,000 CLI calls), and usage rows
through the gateway's own usage store in large batches, so whatever that store maintains beside
its rows (a roll-up, an index) is maintained here too. Changes and creates during the measurement
go through ``KeyAdmin``, as the CLI and the admin API make them.

It knows the database only through the gateway's schema and stores; nothing about the benchmark's
processes or figures.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator

from gateway.database.sqlite import CLI_BUSY_TIMEOUT, Database, transaction
from gateway.keys.management import KeyAdmin, KeyChange
from gateway.keys.store import DEFAULT_SCOPES, open_keystore
from gateway.usage.store import UsageCounts, UsageKey, open_usage_store

BATCH = 100_000
USAGE_MODELS = 10
USAGE_KEYS = 250
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # the key id alphabet (gateway.keys.apikey)


def filler_id(index: int) -> str:
    """A key id no drawn id collides with by chance: 8 characters, the last one fixed."""
    digits = []
    for _ in range(7):
        index, digit = divmod(index, len(_ID_ALPHABET))
        digits.append(_ID_ALPHABET[digit])
    return "".join(digits) + "z"


def add_keys(database_url: str, count: int) -> list[str]:
    """``count`` ordinary keys (inference and read, no limits, no globs) beside those there; their ids."""
    ids = [filler_id(index) for index in range(count)]
    scopes = json.dumps(sorted(scope.value for scope in DEFAULT_SCOPES))
    rows = [(key_id, f"scale-{index:06d}", f"{index:064x}", 1.7e9 + index, scopes) for index, key_id in enumerate(ids)]

    def insert(connection: sqlite3.Connection) -> None:
        with transaction(connection):
            connection.executemany(
                "INSERT INTO keys (id, name, digest, created_at, revoked, scopes, models) "
                "VALUES (?, ?, ?, ?, 0, ?, '[]')",
                rows,
            )
            # As every write does: a running gateway notices keys changed.
            connection.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")

    database = Database(database_url, busy_timeout=CLI_BUSY_TIMEOUT)
    try:
        database.open()
        database.run(insert)
    finally:
        database.close()
    return ids


def create_key(database_url: str, name: str, models: tuple[str, ...] = ()) -> str:
    """A key made as the CLI makes one (``models``: its globs); its secret."""
    store = open_keystore(database_url)
    try:
        secret = KeyAdmin(store).create(name, KeyChange(models=models)).secret
    finally:
        store.close()
    if secret is None:
        raise RuntimeError("KeyAdmin.create returned no secret")
    return secret


def usage_shape(rows: int) -> tuple[int, int]:
    """(keys, days) for ``rows`` usage rows over USAGE_MODELS models: up to USAGE_KEYS keys, and as
    many days back from today as it takes (1,000,000 rows: 250 keys, 400 days)."""
    keys = max(1, min(USAGE_KEYS, rows // (USAGE_MODELS * USAGE_MODELS)))
    return keys, max(1, rows // (keys * USAGE_MODELS))


def _usage_rows(rows: int) -> Iterator[dict[UsageKey, UsageCounts]]:
    keys, days = usage_shape(rows)
    today = dt.datetime.now(dt.UTC).date()
    batch: dict[UsageKey, UsageCounts] = {}
    for back in range(days):
        day = (today - dt.timedelta(days=back)).isoformat()
        for key in range(keys):
            for model in range(USAGE_MODELS):
                usage = UsageKey(day, filler_id(key), f"scale-{key:06d}", f"model-{model}:latest")
                batch[usage] = UsageCounts(requests=3, prompt_tokens=120 + key, completion_tokens=300 + model)
                if len(batch) >= BATCH:
                    yield batch
                    batch = {}
    if batch:
        yield batch


def add_usage(database_url: str, rows: int) -> int:
    """About ``rows`` rows of daily usage (a whole number of days); how many were written."""
    store = open_usage_store(database_url)
    written = 0
    try:
        for batch in _usage_rows(rows):
            store.add(batch)
            written += len(batch)
    finally:
        store.close()
    return written
