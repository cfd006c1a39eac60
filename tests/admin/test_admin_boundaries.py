"""The admin API's edges over real HTTP: credentials a browser adds on its own, failures nobody
foresaw, and the same rules and messages as the CLI for every parameter."""

from __future__ import annotations

import base64
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cli.main import main
from gateway.database.sqlite import sqlite_path
from tests.servers import RunningGateway

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url + "/admin/api", headers=gateway.auth, timeout=10) as client:
        yield client


@pytest.fixture
def cli(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> object:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("GATEWAY_DATABASE_URL", database_url)

    def run(*args: str) -> tuple[int, str]:
        """The exit code and stderr of ``ollama-gateway ARGS`` (argparse's exit too)."""
        try:
            code = main(list(args))
        except SystemExit as exited:
            code = int(exited.code or 0)
        # Less the line naming the database, which every command prints first.
        err = capsys.readouterr().err
        return code, err.removeprefix(f"ollama-gateway: database {database_url.removeprefix('sqlite:///')}\n")

    return run


def test_basic_auth_and_cross_site_requests_are_refused(gateway: RunningGateway) -> None:
    url = gateway.url + "/admin/api/keys"
    basic = base64.b64encode(f"admin:{gateway.key}".encode()).decode()
    refused = httpx.get(url, headers={"Authorization": f"Basic {basic}"})
    assert (refused.status_code, refused.json()) == (
        401,
        {"error": "the admin API takes a key as Authorization: Bearer or X-API-Key"},
    )
    assert refused.headers["www-authenticate"] == 'Bearer realm="ollama-gateway"'
    # The same key as a bearer token or X-API-Key gets in; Basic still works on the forwarded routes.
    assert httpx.get(url, headers=gateway.auth).status_code == 200
    assert httpx.get(url, headers={"X-API-Key": gateway.key}).status_code == 200
    assert httpx.get(gateway.url + "/api/tags", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    for site in ("cross-site", "same-site"):
        crossed = httpx.post(url, json={"name": "csrf"}, headers={**gateway.auth, "Sec-Fetch-Site": site})
        assert (crossed.status_code, crossed.json()) == (
            403,
            {"error": "the admin API refuses requests started by another site"},
        )
    for site in ("same-origin", "none"):
        assert httpx.get(url, headers={**gateway.auth, "Sec-Fetch-Site": site}).status_code == 200
    assert [item["name"] for item in httpx.get(url, headers=gateway.auth).json()] == ["test-admin-0"]


def test_an_unforeseen_failure_is_a_json_500_and_logged(
    admin: httpx.Client, database_url: str, caplog: pytest.LogCaptureFixture, gateway: RunningGateway
) -> None:
    # A row this version cannot read (a scope from a newer CLI): not a refusal anyone planned.
    with sqlite3.connect(sqlite_path(database_url)) as connection:
        connection.execute("UPDATE keys SET scopes = '[\"root\"]'")
    with caplog.at_level(logging.ERROR, logger="gateway.admin"):
        failed = admin.get("/keys")
    assert (failed.status_code, failed.json()) == (500, {"error": "internal error"})
    assert failed.headers["content-type"] == "application/json"
    assert failed.headers["cache-control"] == "no-store"
    [record] = [record for record in caplog.records if record.name == "gateway.admin"]
    assert record.exc_info is not None
    assert "'root' is not a valid Scope" in caplog.text
    assert gateway.key not in caplog.text


def test_a_database_that_cannot_be_used_is_a_503(
    admin: httpx.Client, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with sqlite3.connect(sqlite_path(database_url)) as connection:
        connection.execute("ALTER TABLE keys RENAME TO keys_elsewhere")
    with caplog.at_level(logging.ERROR, logger="gateway.admin"):
        failed = admin.post("/keys", json={"name": "x"})
    assert (failed.status_code, failed.json()) == (503, {"error": "database unavailable, try again later"})
    # One line with the database's own reason, no traceback: an outage would repeat it per request.
    [record] = [record for record in caplog.records if record.name == "gateway.admin"]
    assert record.getMessage() == "admin request POST /admin/api/keys failed: no such table: keys"
    assert record.exc_info is None


def test_a_body_that_is_not_json(admin: httpx.Client) -> None:
    invalid = admin.post("/keys", content=b'{"name": ', headers={"content-type": "application/json"})
    assert (invalid.status_code, invalid.json()) == (400, {"error": "request body is not valid JSON"})


@pytest.mark.parametrize(
    ("params", "argv", "message"),
    [
        ({"by": "colour"}, ["--by", "colour"], "'colour' is not a grouping (one of key, model, day)"),
        ({"since": "2026-01-01x"}, ["--since", "2026-01-01x"], "'2026-01-01x' is not a date (expected YYYY-MM-DD"),
        (
            {"since": "2026-01-03", "until": "2026-01-01"},
            ["--since", "2026-01-03", "--until", "2026-01-01"],
            "since 2026-01-03 is after until 2026-01-01",
        ),
    ],
)
def test_usage_parameters_are_judged_as_the_cli_judges_them(
    admin: httpx.Client, cli: object, params: dict[str, str], argv: list[str], message: str
) -> None:
    answer = admin.get("/usage", params=params)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(message)
    code, err = cli("usage", *argv)  # type: ignore[operator]
    assert code == 2
    assert message in err


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"stack": "colour"}, "'colour' is not a stacking (one of key, model)"),
        ({"format": "xml"}, "'xml' is not a format (one of json, csv)"),
    ],
)
def test_the_apis_own_parameters_use_the_same_rules(admin: httpx.Client, params: dict[str, str], message: str) -> None:
    path = "/usage/daily" if "stack" in params else "/usage"
    answer = admin.get(path, params=params)
    assert (answer.status_code, answer.json()) == (400, {"error": message})


@pytest.mark.parametrize(
    ("body", "argv", "message"),
    [
        (
            {"name": "x" * 201},
            ["x" * 201],
            "a key name is 1 to 64 printable characters without surrounding spaces",
        ),
        ({"name": "x", "expires": ""}, ["x", "--expires", ""], "'' is not a duration (30d, 12h) or a date"),
        ({"name": "x", "scopes": ["root"]}, ["x", "--scope", "root"], "'root' is not a scope (one of inference"),
        (
            {"name": "x", "limits": {"rpm": 99999999999999999999}},
            ["x", "--rpm", "99999999999999999999"],
            "'99999999999999999999' is larger than the largest limit",
        ),
        (
            {"name": "x", "models": ["m" * 400]},
            ["x", "--model", "m" * 400],
            "'" + "m" * 40 + "…' is not a valid model name or glob",
        ),
        ({"name": "x", "expires": "999999999w"}, ["x", "--expires", "999999999w"], "'999999999w' is after 9999-12-31"),
    ],
)
def test_key_values_are_judged_as_the_cli_judges_them(
    admin: httpx.Client, cli: object, body: dict[str, object], argv: list[str], message: str
) -> None:
    answer = admin.post("/keys", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(message)
    code, err = cli("keys", "create", *argv)  # type: ignore[operator]
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_the_cli_refuses_to_rotate_a_revoked_key(admin: httpx.Client, cli: object) -> None:
    key_id = admin.post("/keys", json={"name": "gone"}).json()["id"]
    admin.post(f"/keys/{key_id}/revoke")
    assert cli("keys", "rotate", "gone") == (1, "ollama-gateway: error: key 'gone' is revoked\n")  # type: ignore[operator]
    assert cli("keys", "update", "gone", "--rpm", "5") == (1, "ollama-gateway: error: key 'gone' is revoked\n")  # type: ignore[operator]


def test_the_published_schema_promises_no_more_than_the_rules(admin: httpx.Client) -> None:
    schema = admin.get("/openapi.json").json()["components"]["schemas"]
    expires = schema["NewKey"]["properties"]["expires"]
    assert "pattern" not in str(expires)
    assert "9999-12-31" in str(expires)
    assert "pattern" not in str(schema["NewKey"]["properties"]["name"])
