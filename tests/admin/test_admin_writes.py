"""Writes through the admin API over real HTTP: values out of range, concurrent changes, keys that
can no longer work, and what the audit line says about them."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

import gateway.keys.sqlite as keystore_sqlite
from gateway.database.sqlite import sqlite_path
from gateway.keys.store import KeyRecord
from tests.servers import RunningGateway

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url + "/admin/api", headers=gateway.auth, timeout=10) as client:
        yield client


def _names(admin: httpx.Client) -> list[str]:
    listed = admin.get("/keys")
    assert listed.status_code == 200
    return [item["name"] for item in listed.json()]


@pytest.mark.parametrize(
    ("expires", "message"),
    [
        ("999999999w", "'999999999w' is after 9999-12-31"),
        ("9999-12-31T23:59:59-05:00", "'9999-12-31T23:59:59-05:00' is after 9999-12-31"),
        ("9" * 13 + "s", f"'{'9' * 13}s' is not a duration (30d, 12h) or a date (2027-01-31)"),
        ("2020-01-01", "'2020-01-01' is not in the future"),
        ("0s", "'0s' is not in the future"),
        ("", "'' is not a duration (30d, 12h) or a date (2027-01-31)"),
    ],
)
def test_an_impossible_expiry_is_refused_and_nothing_is_stored(admin: httpx.Client, expires: str, message: str) -> None:
    created = admin.post("/keys", json={"name": "far", "expires": expires})
    assert (created.status_code, created.json()) == (400, {"error": message})
    assert _names(admin) == ["test-admin-0"]


def test_the_latest_expiry_is_accepted(admin: httpx.Client) -> None:
    created = admin.post("/keys", json={"name": "far", "expires": "9999-12-31"})
    assert created.status_code == 201
    assert created.json()["expires_at"] == "9999-12-31T00:00:00Z"
    assert admin.patch(f"/keys/{created.json()['id']}", json={"expires": None}).json()["expires_at"] is None


@pytest.mark.parametrize("stored", [1e300, float("inf"), -1e300])
def test_a_stored_time_out_of_range_never_breaks_a_listing(
    admin: httpx.Client, database_url: str, stored: float, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli.main import main

    key_id = admin.post("/keys", json={"name": "odd"}).json()["id"]
    # Written before expiries were checked (or by hand): the listing must still work.
    with sqlite3.connect(sqlite_path(database_url)) as connection:
        connection.execute("UPDATE keys SET expires_at = ? WHERE id = ?", (stored, key_id))
    shown = admin.get(f"/keys/{key_id}")
    assert shown.status_code == 200
    assert shown.json()["expires_at"] == ("9999-12-31T23:59:59Z" if stored > 0 else "0001-01-01T00:00:00Z")
    assert _names(admin) == ["odd", "test-admin-0"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GATEWAY_DATABASE_URL", database_url)
        assert main(["keys", "list"]) == 0
        assert main(["keys", "show", "odd"]) == 0
    assert "odd" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"rpm": 10**20}, "'100000000000000000000' is larger than the largest limit (9223372036854775807)"),
        ({"rpm": 2**63}, "'9223372036854775808' is larger than the largest limit (9223372036854775807)"),
        # 4000 digits: Python reads at most 4300 as a number.
        ({"tpd": 10**4000 - 1}, "'" + "9" * 40 + "…' is larger than the largest limit (9223372036854775807)"),
        ({"weight": 10**4000 - 1}, "'" + "9" * 40 + "…' is not a weight from 1 to 100 or 'default'"),
        ({"rpm": 1e20}, "'1e+20' is not a number, 'unlimited' or 'default'"),
        ({"rpm": 1.5}, "'1.5' is not a number, 'unlimited' or 'default'"),
        ({"rpm": None}, "'null' is not a number, 'unlimited' or 'default'"),
    ],
)
def test_huge_numbers_are_refused_with_the_rules_message(
    admin: httpx.Client, limits: dict[str, object], message: str
) -> None:
    created = admin.post("/keys", json={"name": "big", "limits": limits})
    assert (created.status_code, created.json()) == (400, {"error": message})
    assert _names(admin) == ["test-admin-0"]


def test_the_largest_limit_is_kept_exactly(admin: httpx.Client) -> None:
    created = admin.post("/keys", json={"name": "big", "limits": {"tpd": 2**63 - 1}})
    assert created.json()["limits"]["tpd"] == 2**63 - 1


def test_a_key_needs_a_scope(admin: httpx.Client) -> None:
    message = {"error": "a key needs at least one scope (one of inference, read, admin)"}
    refused = admin.post("/keys", json={"name": "none", "scopes": []})
    assert (refused.status_code, refused.json()) == (400, message)
    assert _names(admin) == ["test-admin-0"]
    created = admin.post("/keys", json={"name": "ops", "scopes": ["admin"]}).json()
    assert created["scopes"] == ["admin"]
    emptied = admin.patch(f"/keys/{created['id']}", json={"scopes": []})
    assert (emptied.status_code, emptied.json()) == (400, message)
    assert admin.get(f"/keys/{created['id']}").json()["scopes"] == ["admin"]
    # An empty list is refused whatever else the request says.
    assert admin.post("/keys", json={"name": "ops2", "scopes": [], "admin": True}).json() == message


def test_a_change_made_while_another_is_decided_is_kept(
    admin: httpx.Client, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin removes a key's admin scope (here, straight in the database, as another replica
    or the CLI would) after a limits edit has read the key, just before it writes: the edit must
    not write the admin scope back. The removal has to wait for the edit's transaction."""
    key_id = admin.post("/keys", json={"name": "shared", "scopes": ["admin", "read"]}).json()["id"]
    encode = keystore_sqlite._row
    writers: list[threading.Thread] = []

    def remove_admin() -> None:
        with sqlite3.connect(sqlite_path(database_url), timeout=10) as connection:
            connection.execute("UPDATE keys SET scopes = '[\"read\"]' WHERE id = ?", (key_id,))

    def raced_then_encoded(record: KeyRecord) -> tuple[object, ...]:
        # As the edit prepares its write (it has read the key), the other admin's write comes in.
        if record.id == key_id:
            writer = threading.Thread(target=remove_admin)
            writers.append(writer)
            writer.start()
            # Bounded: where the read is part of the edit's transaction, the writer waits for it.
            writer.join(0.5)
        return encode(record)

    monkeypatch.setattr(keystore_sqlite, "_row", raced_then_encoded)
    edited = admin.patch(f"/keys/{key_id}", json={"limits": {"rpm": 5}})
    monkeypatch.undo()
    assert edited.status_code == 200
    assert writers
    for writer in writers:
        writer.join(10)
        assert not writer.is_alive()
    final = admin.get(f"/keys/{key_id}").json()
    assert (final["scopes"], final["limits"]["rpm"]) == (["read"], 5)


def test_concurrent_requests_on_one_key_all_take_effect(admin: httpx.Client) -> None:
    bodies: list[dict[str, object]] = [
        {"limits": {"rpm": 11}},
        {"limits": {"tpm": 12}},
        {"limits": {"tpd": 13}},
        {"limits": {"concurrency": 14}},
        {"limits": {"weight": 15}},
        {"models": ["qwen3"]},
        {"scopes": ["read"]},
        {"expires": "9000-01-01"},
    ]
    key_id = admin.post("/keys", json={"name": "busy", "scopes": ["admin", "read"]}).json()["id"]
    start = threading.Barrier(len(bodies))
    statuses: list[int] = []

    def change(body: dict[str, object]) -> None:
        start.wait(10)
        statuses.append(admin.patch(f"/keys/{key_id}", json=body).status_code)

    workers = [threading.Thread(target=change, args=(body,)) for body in bodies]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert statuses == [200] * len(bodies)
    final = admin.get(f"/keys/{key_id}").json()
    assert final["limits"] == {"rpm": 11, "tpm": 12, "tpd": 13, "concurrency": 14, "weight": 15}
    assert (final["models"], final["scopes"], final["expires_at"]) == (["qwen3"], ["read"], "9000-01-01T00:00:00Z")


def test_a_revoked_or_expired_key_gets_no_new_secret(admin: httpx.Client, database_url: str) -> None:
    revoked = admin.post("/keys", json={"name": "gone"}).json()["id"]
    admin.post(f"/keys/{revoked}/revoke")
    for method, path, body in (("POST", "rotate", None), ("PATCH", "", {"limits": {"rpm": 1}})):
        answer = admin.request(method, f"/keys/{revoked}/{path}".rstrip("/"), json=body)
        assert (answer.status_code, answer.json()) == (409, {"error": "key 'gone' is revoked"})
    expired = admin.post("/keys", json={"name": "old"}).json()["id"]
    with sqlite3.connect(sqlite_path(database_url)) as connection:
        connection.execute("UPDATE keys SET expires_at = ? WHERE id = ?", (time.time() - 60, expired))
    rotated = admin.post(f"/keys/{expired}/rotate")
    assert (rotated.status_code, rotated.json()) == (
        409,
        {"error": "key 'old' has expired: give it a new expiry first"},
    )
    # A new expiry brings it back; then it may be rotated.
    assert admin.patch(f"/keys/{expired}", json={"expires": "30d"}).json()["status"] == "active"
    assert admin.post(f"/keys/{expired}/rotate").status_code == 200


def _audit_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if '"type":"audit"' in line]


def test_the_audit_line_names_the_fields_a_write_changed(
    make_gateway: Callable[..., RunningGateway], capfd: pytest.CaptureFixture[str]
) -> None:
    gateway = make_gateway(log_format="json")
    with httpx.Client(base_url=gateway.url + "/admin/api", headers=gateway.auth, timeout=10) as admin:
        created = admin.post("/keys", json={"name": "dave", "models": ["qwen3"], "limits": {"rpm": 5}}).json()
        admin.patch(f"/keys/{created['id']}", json={"scopes": ["read"], "limits": {"rpm": 6, "tpm": "default"}})
        admin.post(f"/keys/{created['id']}/rotate")
        admin.post(f"/keys/{created['id']}/revoke")
        admin.post("/keys", json={"name": "dave"})
        admin.get("/keys")
    out = capfd.readouterr().out
    assert created["key"] not in out
    lines = [
        (line["action"], line["target"], line["target_name"], line["changed"], line["status"])
        for line in _audit_lines(out)
    ]
    assert lines == [
        ("keys.create", created["id"], "dave", ["name", "models", "limits.rpm"], 201),
        ("keys.update", created["id"], "dave", ["scopes", "limits.rpm"], 200),
        ("keys.rotate", created["id"], "dave", ["secret"], 200),
        ("keys.revoke", created["id"], "dave", ["revoked"], 200),
        ("keys.create", None, "dave", [], 409),  # no key was made: no id to name
        ("keys.list", None, None, [], 200),
    ]


def test_the_audit_line_names_the_key_a_show_or_a_refusal_was_about(
    make_gateway: Callable[..., RunningGateway], capfd: pytest.CaptureFixture[str]
) -> None:
    gateway = make_gateway(log_format="json")
    with httpx.Client(base_url=gateway.url + "/admin/api", headers=gateway.auth, timeout=10) as admin:
        key_id = admin.post("/keys", json={"name": "erin"}).json()["id"]
        capfd.readouterr()
        assert admin.get(f"/keys/{key_id}").status_code == 200
        assert admin.patch(f"/keys/{key_id}", json={"limits": {"rpm": "lots"}}).status_code == 400
        assert admin.post(f"/keys/{key_id}/revoke").status_code == 200
        assert admin.post(f"/keys/{key_id}/rotate").status_code == 409
        assert admin.patch(f"/keys/{key_id}", json={"limits": {"rpm": 5}}).status_code == 409
        assert admin.get("/keys/nope").status_code == 404
    lines = [
        (line["action"], line["target"], line["target_name"], line["status"])
        for line in _audit_lines(capfd.readouterr().out)
    ]
    assert lines == [
        ("keys.show", key_id, "erin", 200),
        ("keys.update", key_id, "erin", 400),
        ("keys.revoke", key_id, "erin", 200),
        ("keys.rotate", key_id, "erin", 409),
        ("keys.update", key_id, "erin", 409),
        ("keys.show", "nope", None, 404),  # no such key: nothing to name
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"admin": "yes"}, "admin: input should be a valid boolean"),
        ({"admin": "on"}, "admin: input should be a valid boolean"),
        ({"admin": "true"}, "admin: input should be a valid boolean"),
        ({"admin": 1}, "admin: input should be a valid boolean"),
        ({"admin": 0}, "admin: input should be a valid boolean"),
        ({"admin": None}, "admin: input should be a valid boolean"),
        ({"scopes": "read"}, "scopes: input should be a valid list"),
        ({"scopes": [1]}, "scopes.0: input should be a valid string"),
        ({"models": "llama3*"}, "models: input should be a valid list"),
        ({"models": [3]}, "models.0: input should be a valid string"),
        ({"expires": 30}, "expires: input should be a valid string"),
        ({"limits": {"rpm": "60"}}, "limits.rpm: '60' is a string: give the number itself"),
        ({"limits": {"weight": "5"}}, "limits.weight: '5' is a string: give the number itself"),
        ({"limits": {"rpm": True}}, "'true' is not a number, 'unlimited' or 'default'"),
        ({"limits": [60]}, "limits: input should be a valid dictionary"),
        ({"add_ollama_keys": "ssh-ed25519 AAAA"}, "add_ollama_keys: input should be a valid list"),
        ({"remove_ollama_keys": [None]}, "remove_ollama_keys.0: input should be a valid string"),
    ],
)
def test_every_field_is_strictly_typed(admin: httpx.Client, body: dict[str, object], message: str) -> None:
    """As the OpenAPI document types them: a boolean is true or false, not "yes" or 1, as a name is
    a string and not a number; the refusal is the API's usual 400."""
    created = admin.post("/keys", json={"name": "typed", **body})
    assert (created.status_code, created.json()) == (400, {"error": message})
    assert _names(admin) == ["test-admin-0"]
    key_id = admin.post("/keys", json={"name": "typed"}).json()["id"]
    updated = admin.patch(f"/keys/{key_id}", json=body)
    assert (updated.status_code, updated.json()) == (400, {"error": message})
    assert admin.get(f"/keys/{key_id}").json()["scopes"] == ["inference", "read"]
    for name in (1, True, ["typed"]):
        refused = admin.post("/keys", json={"name": name})
        assert (refused.status_code, refused.json()) == (400, {"error": "name: input should be a valid string"})


def test_booleans_and_numbers_as_json_types_are_taken(admin: httpx.Client) -> None:
    created = admin.post("/keys", json={"name": "ops", "admin": True, "limits": {"rpm": 60, "weight": "default"}})
    assert created.status_code == 201
    assert created.json()["scopes"] == ["admin", "inference", "read"]
    assert created.json()["limits"]["rpm"] == 60
    unchanged = admin.patch(f"/keys/{created.json()['id']}", json={"admin": False})
    assert unchanged.json()["scopes"] == ["admin", "inference", "read"]  # false adds nothing


def test_a_client_that_leaves_mid_request_is_not_a_failure(
    make_gateway: Callable[..., RunningGateway], capfd: pytest.CaptureFixture[str]
) -> None:
    gateway = make_gateway(log_format="json")
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /admin/api/keys HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\nAuthorization: Bearer " + gateway.key.encode() + b'\r\n\r\n{"name": "ha'
        )
    seen = ""
    deadline = time.monotonic() + 10
    while '"type":"audit"' not in seen:
        assert time.monotonic() < deadline, "no audit line for the abandoned request"
        seen += capfd.readouterr().out
        time.sleep(0.02)
    [line] = _audit_lines(seen)
    assert (line["action"], line["status"]) == ("POST /admin/api/keys", 499)
    with httpx.Client(base_url=gateway.url + "/admin/api", headers=gateway.auth) as admin:
        assert _names(admin) == ["test-admin-0"]
