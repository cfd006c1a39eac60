"""The rules the CLI and the admin API share (``gateway.keyadmin``, ``gateway.usagereport``), the
admin settings, and the audit line's text form."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.accesslog import AuditLog
from gateway.keyadmin import (
    KEEP,
    DuplicateKey,
    InvalidKeyRequest,
    KeyAdmin,
    KeyChange,
    UnknownKey,
    apply,
    check_name,
    parse_expiry,
    parse_limit,
    parse_weight,
)
from gateway.keystore import DEFAULT_SCOPES, UNLIMITED, KeyRecord, Limits, Scope
from gateway.keystore.sqlite import SqliteKeyStore
from gateway.usagereport import InvalidUsageQuery, UsageQuery
from tests.conftest import gateway_settings

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
    assert parse_expiry("2027-01-31") == 1801353600.0
    assert parse_expiry("2027-01-31T01:00:00+01:00") == 1801353600.0
    with pytest.raises(InvalidKeyRequest):
        parse_expiry("tomorrow")


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
    store = SqliteKeyStore(database_url)
    try:
        keys = KeyAdmin(store, clock=lambda: 50.0)
        record, secret = keys.create("bob", KeyChange(limits={"rpm": 1}))
        assert secret.startswith(f"ogw_{record.id}_")
        with pytest.raises(DuplicateKey, match="a key named 'bob' already exists"):
            keys.create("bob", KeyChange())
        for operation in (keys.get, keys.revoke, keys.rotate):
            with pytest.raises(UnknownKey, match="no key named 'carol'"):
                operation("carol")
        with pytest.raises(UnknownKey):
            keys.by_id("nope")
        assert keys.by_id(record.id) == keys.get("bob")
        assert keys.describe(keys.revoke("bob"))["status"] == "revoked"
    finally:
        store.close()


def test_usage_queries() -> None:
    assert UsageQuery(since="2026-01-01", until="2026-01-01").by == "key"
    with pytest.raises(InvalidUsageQuery, match="--since 2026-01-02 is after --until 2026-01-01"):
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
