"""The rules the CLI and the admin API share (``gateway.keys.management``, ``gateway.usage.report``), the
admin settings, and the audit line's text form."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
from collections.abc import Hashable, Mapping
from dataclasses import replace

import pytest
from pydantic import ValidationError

from gateway.admin.traffic import LiveTraffic
from gateway.keys.keyring import Keyring
from gateway.keys.management import (
    KEEP,
    DuplicateKey,
    InvalidKeyRequest,
    KeyAdmin,
    KeyChange,
    UnknownKey,
    UnusableKey,
    apply,
    check_name,
    describe,
    parse_expiry,
    parse_limit,
    parse_weight,
    when,
)
from gateway.keys.store import DEFAULT_SCOPES, UNLIMITED, KeyChanges, KeyRecord, Limits, Scope, open_keystore
from gateway.observe.accesslog import AuditLog
from gateway.usage.report import MAX_DAYS, MAX_SERIES, InvalidUsageQuery, UsageQuery, daily
from gateway.usage.store import UsageCounts, UsageKey, open_usage_store
from tests.conftest import gateway_settings
from tests.records import make_record

NOW = 1_765_000_000.0  # 2025-12-06
BASE = KeyRecord(
    id="k1",
    name="alice",
    digest="d",
    created_at=1.0,
    scopes=DEFAULT_SCOPES,
    models=("llama3*",),
    limits=Limits(rpm=5, weight=2),
    expires_at=100.0,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("60", 60), ("unlimited", UNLIMITED), ("default", None)],
)
def test_limits(text: str, value: int | None) -> None:
    assert parse_limit(text) == value


@pytest.mark.parametrize("text", ["-1", "1.5", "", "²", "٣", "lots", "Unlimited"])
def test_impossible_limits(text: str) -> None:
    with pytest.raises(InvalidKeyRequest, match="is not a number, 'unlimited' or 'default'"):
        parse_limit(text)


@pytest.mark.parametrize("text", ["0", "101", "-1", "x"])
def test_impossible_weights(text: str) -> None:
    with pytest.raises(InvalidKeyRequest, match="is not a weight from 1 to 100"):
        parse_weight(text)


def test_expiry() -> None:
    assert parse_expiry("never") is None
    assert parse_expiry("2d", now=1000.0) == 1000.0 + 2 * 86400
    assert parse_expiry("2027-01-31", now=NOW) == 1801353600.0
    assert parse_expiry("2027-01-31T01:00:00+01:00", now=NOW) == 1801353600.0
    assert parse_expiry("9999-12-31T23:59:59Z", now=NOW) == 253402300799.0
    with pytest.raises(InvalidKeyRequest):
        parse_expiry("tomorrow")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("999999999w", "'999999999w' is after 9999-12-31"),
        ("9999-12-31T23:59:59-05:00", "is after 9999-12-31"),
        ("9999-12-31T23:59:59.5Z", "is after 9999-12-31"),
        ("1" * 5000 + "s", "is not a duration"),
        ("2025-01-01", "'2025-01-01' is not in the future"),
        ("0d", "'0d' is not in the future"),
        ("", "'' is not a duration"),
    ],
)
def test_impossible_expiries(text: str, message: str) -> None:
    with pytest.raises(InvalidKeyRequest, match=re.escape(message)):
        parse_expiry(text, now=NOW)


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        (None, None),
        (0.0, "1970-01-01T00:00:00Z"),
        (1e300, "9999-12-31T23:59:59Z"),
        (float("inf"), "9999-12-31T23:59:59Z"),
        (-1e300, "0001-01-01T00:00:00Z"),
        (float("nan"), None),
    ],
)
def test_every_stored_time_can_be_shown(stored: float | None, shown: str | None) -> None:
    assert when(stored) == shown
    assert describe(replace(BASE, expires_at=stored, last_used_at=stored), now=NOW)["expires_at"] == shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9223372036854775807", None),
        ("9223372036854775808", "is larger than the largest limit (9223372036854775807)"),
        ("9" * 5000, "is larger than the largest limit"),
    ],
)
def test_limits_fit_the_database(text: str, message: str | None) -> None:
    if message is None:
        assert parse_limit(text) == int(text)
        return
    with pytest.raises(InvalidKeyRequest, match=re.escape(message)) as refused:
        parse_limit(text)
    assert len(str(refused.value)) < 120  # the input is not echoed whole


@pytest.mark.parametrize("name", ["", " a", "a ", "x" * 65, "tab\there", "new\nline"])
def test_impossible_names(name: str) -> None:
    with pytest.raises(InvalidKeyRequest):
        check_name(name)


def test_a_change_keeps_what_it_does_not_name() -> None:
    assert apply(KeyChange(), BASE) == BASE
    changed = apply(KeyChange(admin=True, limits={"tpm": 10}, expires_at=None), BASE)
    assert changed.scopes == DEFAULT_SCOPES | {Scope.ADMIN}
    assert changed.limits == Limits(rpm=5, tpm=10, weight=2)
    assert (changed.models, changed.expires_at) == (("llama3*",), None)
    assert apply(KeyChange(models=()), BASE).models == ()
    assert apply(KeyChange(scopes=frozenset({Scope.READ}), expires_at=KEEP), BASE).scopes == {Scope.READ}
    with pytest.raises(InvalidKeyRequest, match="'bad name!' is not a valid model name or glob"):
        apply(KeyChange(models=("bad name!",)), BASE)


def test_operations_and_their_errors(database_url: str) -> None:
    store = open_keystore(database_url)
    try:
        keys = KeyAdmin(store, clock=lambda: 50.0)
        created = keys.create("bob", KeyChange(limits={"rpm": 1}))
        record = created.record
        assert created.secret is not None
        assert created.secret.startswith(f"ogw_{record.id}_")
        assert created.changed == ["name", "limits.rpm"]
        with pytest.raises(DuplicateKey, match="a key named 'bob' already exists"):
            keys.create("bob", KeyChange())
        with pytest.raises(UnknownKey, match="no key named 'carol'"):
            keys.get("carol")
        for operation in (keys.revoke, keys.rotate, lambda key_id: keys.update(key_id, KeyChange())):
            with pytest.raises(UnknownKey, match="no key with id 'nope'"):
                operation("nope")
        assert keys.by_id(record.id) == keys.get("bob")
        revoked = keys.revoke(record.id)
        assert (keys.describe(revoked.record)["status"], revoked.changed) == ("revoked", ["revoked"])
        for refused in (keys.rotate, lambda key_id: keys.update(key_id, KeyChange(admin=True))):
            with pytest.raises(UnusableKey, match="key 'bob' is revoked"):
                refused(record.id)
        assert keys.get("bob") == revoked.record  # nothing written
    finally:
        store.close()


def test_a_change_is_read_and_written_in_one_transaction(database_url: str) -> None:
    """A second writer that starts while a change is being decided waits for it, then applies its
    own change on top: neither is lost."""
    first, second = open_keystore(database_url), open_keystore(database_url)
    try:
        record = KeyAdmin(first).create("shared", KeyChange(scopes=frozenset({Scope.ADMIN, Scope.READ}))).record
        finished = threading.Event()

        def concurrent_limit_edit() -> None:
            KeyAdmin(second).update(record.id, KeyChange(limits={"rpm": 7}))
            finished.set()

        writer = threading.Thread(target=concurrent_limit_edit)

        def remove_admin(current: KeyRecord) -> KeyRecord:
            writer.start()
            # The other writer is blocked on the transaction this change runs in.
            assert not finished.wait(0.3)
            return apply(KeyChange(scopes=frozenset({Scope.READ})), current)

        first.modify(record.id, remove_admin)
        writer.join(10)
        assert finished.is_set()
        final = KeyAdmin(first).get("shared")
        assert (final.scopes, final.limits.rpm) == (frozenset({Scope.READ}), 7)
    finally:
        first.close()
        second.close()


class _SlowStore:
    """A key store whose next read, once ``hold`` is set, answers with what it saw only after
    ``release``: a look at the store that began before a write and ends after it."""

    def __init__(self) -> None:
        self.counter = 0
        self.records: list[KeyRecord] = []
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def changes(self, cursor: Hashable | None) -> KeyChanges:
        seen = KeyChanges(self.counter, list(self.records), full=True)
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.release.wait(10)
        return seen

    def record_use(self, last_used: Mapping[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


async def test_after_a_write_the_keyring_looks_again() -> None:
    store = _SlowStore()
    keyring = Keyring(lambda: store, refresh_interval=60)
    await keyring.start()
    store.hold = True
    try:
        # A look under way (someone presented an unknown key) has read the counter...
        looking = asyncio.create_task(keyring.catch_up())
        assert await asyncio.to_thread(store.entered.wait, 10)
        # ...then a key is revoked (here: added) and committed, and the writer asks to catch up.
        store.records = [BASE]
        store.counter = 1
        caught_up = asyncio.create_task(keyring.catch_up())
        await asyncio.sleep(0)  # one turn of the loop: the writer's call is under way (not a timing)
        store.release.set()
        await asyncio.wait_for(asyncio.gather(looking, caught_up), 10)
        assert keyring.get("k1") == BASE  # the change is in memory once the writer's call returns
    finally:
        store.release.set()
        await keyring.close()


def test_usage_queries() -> None:
    assert UsageQuery(since="2026-01-01", until="2026-01-01").by == "key"
    with pytest.raises(InvalidUsageQuery, match=r"^since 2026-01-02 is after until 2026-01-01$"):
        UsageQuery(since="2026-01-02", until="2026-01-01")
    with pytest.raises(InvalidUsageQuery):
        UsageQuery(by="colour")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"admin_address": "9200"}, "must be host:port"),
        ({"admin_address": "127.0.0.1:0"}, "must be host:port"),
        ({"admin_address": "127.0.0.1:9200", "metrics_address": "127.0.0.1:9200"}, "must differ"),
        ({"admin_address": "127.0.0.1:9200", "workers": 2, "redis_url": "redis://x"}, "GATEWAY_WORKERS=1"),
    ],
)
def test_admin_settings_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        gateway_settings(**overrides)


def test_admin_settings() -> None:
    assert gateway_settings().admin_ui is True
    assert gateway_settings(admin_ui="false").admin_ui is False
    assert gateway_settings(admin_address="").admin_address is None
    assert gateway_settings(admin_address="0.0.0.0:9200").admin_address == "0.0.0.0:9200"


def test_the_audit_line_as_text() -> None:
    lines: list[str] = []
    AuditLog(fmt="text", write=lines.append)(
        action="keys.revoke",
        status=200,
        key_id="k1",
        key_name="ops\nfake line",
        client="10.0.0.1",
        request_id="r1",
        target="k2",
    )
    assert len(lines) == 1
    assert lines[0].endswith(" AUDIT 200 keys.revoke target=k2 key=ops\\nfake line (k1) client=10.0.0.1 id=r1")
    AuditLog(fmt="text", write=lines.append)(
        action="keys.update",
        status=200,
        key_id="k1",
        key_name="ops",
        client="10.0.0.1",
        request_id="r2",
        target="k2",
        target_name="bob\n",
        changed=["scopes", "limits.rpm"],
    )
    assert lines[1].endswith(
        " AUDIT 200 keys.update target=k2 (bob\\n) changed=scopes,limits.rpm key=ops (k1) client=10.0.0.1 id=r2"
    )


def test_a_flood_of_bad_keys_keeps_the_refusals_of_known_keys() -> None:
    traffic = LiveTraffic(keep=3)
    traffic(make_record(time=1.0, forwarded=False, status=403, outcome="forbidden", path="/api/pull"))
    for n in range(10):
        traffic(
            make_record(time=2.0 + n, forwarded=False, status=401, outcome="unauthorized", key_id=None, key_name=None)
        )
    refusals = traffic.refusals()
    assert [(item["time"], item["status"]) for item in refusals] == [(11.0, 401), (10.0, 401), (9.0, 401), (1.0, 403)]


def test_the_daily_chart_is_bounded(database_url: str) -> None:
    store = open_usage_store(database_url)
    try:
        start = dt.date(2024, 1, 1)
        rows = {
            UsageKey((start + dt.timedelta(days=n)).isoformat(), "k1", "alice", "m0"): UsageCounts(1, 1, 0, 0)
            for n in range(MAX_DAYS + 10)
        }
        # Series m1..m24 with m24 the largest; m0 is on every day (the largest in total).
        rows |= {UsageKey("2025-01-05", "k1", "alice", f"m{n}"): UsageCounts(1, n * 10, 0, 0) for n in range(1, 25)}
        store.add(rows)
        chart = daily(store, UsageQuery(), "model")
    finally:
        store.close()
    assert len(chart["days"]) == MAX_DAYS
    assert chart["days"][-1] == (start + dt.timedelta(days=MAX_DAYS + 9)).isoformat()
    assert chart["truncated"] is True
    series = chart["series"]
    assert len(series) == MAX_SERIES
    assert [item["name"] for item in series[:-1]] == sorted(["m0", *(f"m{n}" for n in range(7, 25))])
    assert series[-1]["name"] is None
    assert series[-1]["other"] is True
    assert sum(series[-1]["tokens"]) == sum(n * 10 for n in range(1, 7))
