"""The store contract, held by both backends: every test here runs on SQLite and on a real
PostgreSQL server (``any_database_url``). Keys, public keys, last use, the change counter, usage
increments and reports, concurrent writers, a schema newer than the gateway."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from gateway.database import open_cli_database, open_database
from gateway.database.sqlite import MIGRATIONS, DatabaseError, DatabaseUnusable
from gateway.keys.ollamakey import OllamaKey
from gateway.keys.store import KeyRecord, KeySearch, KeyStoreError, Limits, Scope, UnknownKey, open_keystore
from gateway.usage.store import UsageCounts, UsageKey, open_usage_store

pytestmark = pytest.mark.timeout(30)


def ollama_key(seed: int, comment: str = "") -> OllamaKey:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes([seed]) * 32
    return OllamaKey(blob, comment)


@pytest.fixture
def keys(any_database_url: str) -> Iterator[Any]:
    store = open_keystore(any_database_url)
    yield store
    store.close()


@pytest.fixture
def usage(any_database_url: str) -> Iterator[Any]:
    store = open_usage_store(any_database_url)
    yield store
    store.close()


def new(name: str, **fields: Any) -> KeyRecord:
    return KeyRecord(id="", name=name, digest="", created_at=0.0, **fields)


def test_a_created_key_reads_back_whole_and_moves_the_version(keys: Any) -> None:
    before = keys.changes(None).cursor
    record = new(
        "alice",
        scopes=frozenset({Scope.INFERENCE, Scope.ADMIN}),
        models=("llama3:8b", "qwen*"),
        limits=Limits(rpm=5, tpm=-1, tpd=None, concurrency=2, weight=3),
        expires_at=2_000_000_000.5,
        ollama_keys=(ollama_key(1, "laptop"), ollama_key(2)),
    )
    stored, secret = keys.create(record)
    assert secret
    changed = keys.changes(before)
    assert (changed.records, changed.removed, changed.full) == ([stored], [], False)
    assert keys.get("alice") == stored
    assert keys.load() == [stored]
    assert stored.ollama_keys == (ollama_key(1, "laptop"), ollama_key(2))
    assert stored.limits == Limits(rpm=5, tpm=-1, tpd=None, concurrency=2, weight=3)


def test_names_are_unique_and_unknown_ones_are_refused(keys: Any) -> None:
    keys.create(new("alice"))
    with pytest.raises(KeyStoreError, match="a key named 'alice' already exists"):
        keys.create(new("alice"))
    with pytest.raises(UnknownKey, match="no key named 'bob'"):
        keys.get("bob")
    with pytest.raises(UnknownKey, match="no key with id 'nope'"):
        keys.modify("nope", lambda record: record)
    assert [record.name for record in keys.load()] == ["alice"]


def test_modify_rewrites_the_policy_and_keeps_the_identity(keys: Any) -> None:
    stored, _ = keys.create(new("alice", ollama_keys=(ollama_key(1),)))
    cursor = keys.changes(None).cursor
    before, after = keys.modify(
        stored.id,
        lambda record: replace(
            record, name="mallory", revoked=True, models=("a",), ollama_keys=(ollama_key(2, "new"), ollama_key(1))
        ),
    )
    assert before == stored
    assert (after.name, after.revoked, after.models) == ("alice", True, ("a",))
    # Public keys read back in the order they were added (the kept one first).
    assert keys.get("alice") == replace(after, ollama_keys=(ollama_key(1), ollama_key(2, "new")))
    assert keys.changes(cursor).records == [keys.get("alice")]


def test_a_search_finds_the_same_keys_on_either_backend_and_pages_them_by_name(keys: Any) -> None:
    now = 1_900_000_000.0
    ids = {}
    for name, fields in (
        ("Team_Alpha", {"models": ("llama3:*", "modèle-é")}),
        ("team-beta", {"scopes": frozenset({Scope.ADMIN})}),
        ("100%", {"ollama_keys": (ollama_key(3, "Build-Box"),)}),
        ("old", {"expires_at": now - 1}),
        ("gone", {}),
        ("zeta", {"expires_at": now + 1}),
    ):
        ids[name] = keys.create(new(name, **fields))[0].id
    keys.modify(ids["gone"], lambda record: replace(record, revoked=True))

    def names(**search: Any) -> list[str]:
        found = [record.name for record in keys.load(KeySearch(**search), now)]
        unpaged = replace(KeySearch(**search), offset=0, limit=None)
        assert keys.count(unpaged, now) == len(keys.load(unpaged, now))
        return found

    by_name = ["100%", "Team_Alpha", "gone", "old", "team-beta", "zeta"]  # by code point, as Python sorts
    assert names() == by_name
    assert keys.count(KeySearch(), now) == 6
    # Pages by name, a page past the end empty.
    assert names(limit=2) == by_name[:2]
    assert names(offset=2, limit=3) == by_name[2:5]
    assert names(offset=5) == by_name[5:]
    assert names(offset=6, limit=3) == []
    # Letters in either case; every word must be found, in any of the fields.
    assert names(words=("TEAM",)) == ["Team_Alpha", "team-beta"]
    assert names(words=("team", "admin")) == ["team-beta"]
    assert names(words=("llama3",)) == ["Team_Alpha"]
    assert names(words=("build-box",)) == ["100%"]
    # An Ollama key by its fingerprint, whole or in part, as the keys table shows it.
    shown = ollama_key(3).fingerprint
    assert names(words=(shown,)) == ["100%"]
    assert names(words=(shown[9:30].swapcase(),)) == ["100%"]
    assert names(words=(ollama_key(4).fingerprint,)) == []
    assert names(words=(ids["zeta"],)) == ["zeta"]
    # % and _ are themselves, not patterns.
    assert names(words=("%",)) == ["100%"]
    assert names(words=("m_a",)) == ["Team_Alpha"]
    assert names(words=("m%a",)) == []
    assert names(words=("\\",)) == []
    # Scopes and models item by item, never the JSON text they are kept as.
    assert names(words=("modèle-é",)) == ["Team_Alpha"]
    for text in ('"', "u00e8", ",", "[", '", "'):
        assert names(words=(text,)) == [], text
    # The status as describe() tells it at ``now``, as a word or a filter of its own.
    assert names(status="revoked") == ["gone"]
    assert names(status="expired") == ["old"]
    assert names(status="active") == ["100%", "Team_Alpha", "team-beta", "zeta"]
    assert names(words=("expired",)) == ["old"]
    assert names(status="active", words=("team",), limit=1) == ["Team_Alpha"]
    assert keys.count(KeySearch(status="active", words=("team",), limit=1), now) == 2


def test_a_public_key_belongs_to_one_key_only(keys: Any) -> None:
    keys.create(new("alice", ollama_keys=(ollama_key(7),)))
    bob, _ = keys.create(new("bob"))
    with pytest.raises(KeyStoreError, match="already belongs to the key 'alice'"):
        keys.modify(bob.id, lambda record: replace(record, ollama_keys=(ollama_key(7),)))
    assert keys.get("bob").ollama_keys == ()


def test_last_use_only_moves_forward(keys: Any) -> None:
    stored, _ = keys.create(new("alice"))
    keys.record_use({stored.id: 200.0})
    keys.record_use({stored.id: 100.0})
    assert keys.get("alice").last_used_at == 200.0


def test_concurrent_changes_to_one_key_are_never_lost(any_database_url: str) -> None:
    """Two writers (two processes' worth: two stores, two databases) each add 1 to a limit 15
    times: every read-change-write waits for the other, so the sum is exact."""
    first, second = open_keystore(any_database_url), open_keystore(any_database_url)
    try:
        stored, _ = first.create(new("alice", limits=Limits(rpm=0)))

        def bump(store: Any) -> None:
            for _ in range(15):
                store.modify(stored.id, lambda record: replace(record, limits=Limits(rpm=(record.limits.rpm or 0) + 1)))

        run_together(lambda: bump(first), lambda: bump(second))
        assert first.get("alice").limits.rpm == 30
    finally:
        first.close()
        second.close()


def row(day: str, key: str, model: str) -> UsageKey:
    return UsageKey(day, f"id-{key}", key, model)


def test_usage_adds_up_and_reports_by_key_model_and_day(usage: Any) -> None:
    usage.add({row("2026-01-01", "alice", "m1"): UsageCounts(1, 10, 20, 0)})
    usage.add(
        {
            row("2026-01-01", "alice", "m1"): UsageCounts(2, 5, 5, 1),
            row("2026-01-02", "alice", "m2"): UsageCounts(1, 1, 1, 0),
            row("2026-01-02", "bob", "m1"): UsageCounts(4, 40, 0, 4),
        }
    )
    assert usage.report(by="key") == [("alice", UsageCounts(4, 16, 26, 1)), ("bob", UsageCounts(4, 40, 0, 4))]
    assert usage.report(by="model") == [("m1", UsageCounts(7, 55, 25, 5)), ("m2", UsageCounts(1, 1, 1, 0))]
    assert usage.report(by="day", since="2026-01-02") == [("2026-01-02", UsageCounts(5, 41, 1, 4))]
    assert usage.report(by="model", until="2026-01-01", key_name="alice") == [("m1", UsageCounts(3, 15, 25, 1))]
    chart = usage.daily_tokens(by="key", max_days=10, max_series=5)
    assert (chart.days, chart.truncated, chart.named, sorted(chart.cells), chart.totals) == (
        ["2026-01-01", "2026-01-02"],
        False,
        ["alice", "bob"],
        [("2026-01-01", "alice", 40), ("2026-01-02", "alice", 2), ("2026-01-02", "bob", 40)],
        None,
    )


def test_usage_flushed_by_two_writers_at_once_sums_exactly(any_database_url: str) -> None:
    first, second = open_usage_store(any_database_url), open_usage_store(any_database_url)
    try:
        rows = {row("2026-01-01", name, "m"): UsageCounts(1, 2, 3, 0) for name in ("a", "b", "c")}
        run_together(*[lambda store=store: [store.add(rows) for _ in range(25)] for store in (first, second)])
        assert first.report(by="key") == [(name, UsageCounts(50, 100, 150, 0)) for name in ("a", "b", "c")]
    finally:
        first.close()
        second.close()


def test_a_database_migrated_by_a_newer_gateway_is_refused_in_one_line(any_database_url: str) -> None:
    database = open_cli_database(any_database_url)
    newer = len(MIGRATIONS) + 1
    if any_database_url.startswith("sqlite"):
        database.run(lambda connection: connection.execute(f"PRAGMA user_version={newer}"))
    else:
        database.run(lambda connection: connection.execute("UPDATE schema_version SET version = %s", (newer,)))
    database.close()
    expected = (
        f"the database's schema is version {newer}, newer than this gateway's ({len(MIGRATIONS)}): "
        "run the newer gateway, or restore a backup taken before it migrated"
    )
    server = open_database(any_database_url)
    with pytest.raises((DatabaseError, DatabaseUnusable)) as refused:
        server.open(writable=True)
    server.close()
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


def run_together(*work: Callable[[], object]) -> None:
    """Each in its own thread, released at once; re-raises the first failure."""
    start = threading.Barrier(len(work))
    failures: list[BaseException] = []

    def run(job: Callable[[], object]) -> None:
        start.wait(timeout=10)
        try:
            job()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    if failures:
        raise failures[0]
