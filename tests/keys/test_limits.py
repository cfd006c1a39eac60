"""The per-key limits are defined once (``gateway.keys.store.Limits``): every surface that lists
them takes them from there, so a new limit touches its definition and its enforcement only. These
tests hold the places that cannot be derived (the page's form, the schema's migrations, the
limiter's quota and its settings) to that list."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path

from gateway.admin.keys import KeyPolicy
from gateway.cli.main import build_parser
from gateway.database.sqlite import Database
from gateway.keys.management import describe
from gateway.keys.store import LIMIT_NAMES, QUOTA_NAMES, KeyRecord, Limits
from gateway.policies.limits import Quota
from gateway.settings import Settings


def test_the_limits_in_their_order() -> None:
    assert LIMIT_NAMES == ("rpm", "tpm", "tpd", "concurrency", "weight")
    assert QUOTA_NAMES == ("rpm", "tpm", "tpd", "concurrency")


def test_the_limiter_enforces_each_quota_and_settings_give_each_a_default() -> None:
    assert tuple(field.name for field in dataclasses.fields(Quota)) == QUOTA_NAMES
    defaults = {name for name in Settings.model_fields if name.startswith("default_") and name != "default_max_tokens"}
    assert defaults == {f"default_{name}" for name in QUOTA_NAMES}


def test_the_cli_and_the_admin_api_offer_every_limit() -> None:
    for command in ("create", "update"):
        args = build_parser().parse_args(["keys", command, "k", *(f"--{name}=7" for name in LIMIT_NAMES)])
        assert {name: getattr(args, name) for name in LIMIT_NAMES} == dict.fromkeys(LIMIT_NAMES, 7)
    schema = KeyPolicy.model_json_schema()["properties"]["limits"]
    assert schema["propertyNames"] == {"enum": list(LIMIT_NAMES)}
    assert schema["description"] == (
        "rpm, tpm, tpd, concurrency: a number, 'unlimited' or 'default'; weight: 1-100 or 'default'"
    )
    shown = describe(KeyRecord("k", "k", "", 0.0, limits=Limits(1, 2, 3, 4, 5)), 0.0)["limits"]
    assert shown == {"rpm": 1, "tpm": 2, "tpd": 3, "concurrency": 4, "weight": 5}


def test_the_admin_page_has_an_input_for_every_limit() -> None:
    page = (resources.files("gateway.admin") / "static" / "index.html").read_text()
    assert tuple(re.findall(r'<input name="(\w+)" data-limit', page)) == LIMIT_NAMES
    script = (resources.files("gateway.admin") / "static" / "keys.js").read_text()
    assert not any(f'"{name}"' in script for name in LIMIT_NAMES)


def test_the_keys_table_has_a_column_for_every_limit(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    database.open()
    try:
        columns = database.run(lambda connection: connection.execute("PRAGMA table_info(keys)").fetchall())
    finally:
        database.close()
    names = [column[1] for column in columns]
    # In their order (columns added later, such as the change stamp, may follow them).
    assert [name for name in names if name in LIMIT_NAMES] == list(LIMIT_NAMES)
