"""``ollama-gateway db copy``: a populated SQLite install copied into PostgreSQL, keys working
there with the secrets already handed out, idempotent, a count per table, no password shown."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.database.postgres import redacted
from gateway.keys import apikey
from gateway.keys.ollamakey import OllamaKey
from gateway.keys.store import KeyRecord, Limits, open_keystore
from gateway.usage.report import UsageQuery, daily
from gateway.usage.store import UsageCounts, UsageKey, open_usage_store
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.timeout(60)

USAGE_DAYS = 7


def populate(database_url: str) -> dict[str, str]:
    """Three keys (one revoked, one with public keys), a week of usage; returns name -> secret."""
    keys = open_keystore(database_url)
    secrets = {}
    try:
        for number, name in enumerate(("alice", "bob", "carol")):
            blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes([number]) * 32
            _, secret = keys.create(
                KeyRecord(
                    id="",
                    name=name,
                    digest="",
                    created_at=0.0,
                    limits=Limits(rpm=number + 1),
                    ollama_keys=(OllamaKey(blob, f"{name}-laptop"),) if name != "bob" else (),
                )
            )
            secrets[name] = secret
        bob = keys.get("bob")
        keys.modify(bob.id, lambda record: replace(record, revoked=True))
        keys.record_use({bob.id: 1234.5})
    finally:
        keys.close()
    usage = open_usage_store(database_url)
    try:
        usage.add(
            {
                UsageKey(f"2026-01-{day:02d}", f"id-{name}", name, model): UsageCounts(day, day * 10, day * 3, day % 2)
                for day in range(1, USAGE_DAYS + 1)
                for name in ("alice", "bob")
                for model in ("llama3:8b", "")
            }
        )
    finally:
        usage.close()
    return secrets


def copy(source: str, target: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["db", "copy", "--from", source, "--to", target])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_copy_moves_an_install_to_postgresql_idempotently(
    tmp_path: Path,
    postgres_url: str,
    shared_postgres: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    source = f"sqlite:///{tmp_path / 'gateway.db'}"
    secrets = populate(source)
    usage_rows = USAGE_DAYS * 2 * 2  # days x keys x models
    key_days = model_days = USAGE_DAYS * 2

    assert copy(source, postgres_url, capsys) == (
        0,
        f"keys: 3 read, 3 written\nollama_keys: 2 read, 2 written\nusage: {usage_rows} read, {usage_rows} written\n"
        f"usage_key_days: {key_days} read, {key_days} written\n"
        f"usage_model_days: {model_days} read, {model_days} written\nmeta: 1 read, 1 written\n",
        f"ollama-gateway: database {tmp_path / 'gateway.db'}\nollama-gateway: database {redacted(postgres_url)}\n",
    )
    # Run twice, same result: nothing differs, nothing is written.
    code, out, err = copy(source, postgres_url, capsys)
    assert (code, out) == (
        0,
        f"keys: 3 read, 0 written\nollama_keys: 2 read, 0 written\nusage: {usage_rows} read, 0 written\n"
        f"usage_key_days: {key_days} read, 0 written\nusage_model_days: {model_days} read, 0 written\n"
        "meta: 1 read, 0 written\n",
    )
    assert shared_postgres.password not in out + err

    old, new = open_keystore(source), open_keystore(postgres_url)
    try:
        assert new.load() == old.load()
        for name, secret in secrets.items():
            assert apikey.verify(secret, new.get(name).digest)
        assert new.get("bob").last_used_at == 1234.5
    finally:
        old.close()
        new.close()
    before, after = open_usage_store(source), open_usage_store(postgres_url)
    try:
        for by in ("key", "model", "day"):
            assert after.report(by=by) == before.report(by=by)
        assert daily(after, UsageQuery(), "model") == daily(before, UsageQuery(), "model")
        # The target served more since: copying again lowers nothing and adds nothing.
        grown = UsageKey("2026-01-01", "id-alice", "alice", "llama3:8b")
        after.add({grown: UsageCounts(5, 0, 0, 0)})
        code, out, _ = copy(source, postgres_url, capsys)
        assert (code, out.splitlines()[2]) == (0, f"usage: {usage_rows} read, 0 written")
        assert after.report(by="day", until="2026-01-01") == [("2026-01-01", UsageCounts(4 + 5, 40, 12, 4))]
    finally:
        before.close()
        after.close()


def test_copy_refuses_a_source_file_that_does_not_exist(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = copy(f"sqlite:///{tmp_path / 'missing.db'}", postgres_url, capsys)
    assert (code, out) == (1, "")
    assert err.startswith(f"ollama-gateway: error: no database at {tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()
