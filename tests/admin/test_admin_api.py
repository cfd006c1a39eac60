"""The admin API over real HTTP: a real gateway in front of the fake Ollama, driven with httpx."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import gateway.admin as gateway_admin
from gateway.admin.static import served
from gateway.keys.store import Scope
from gateway.usage.store import UsageCounts, UsageKey, open_usage_store
from tests.conftest import issue_key
from tests.fake_ollama import Behaviour, FakeOllama
from tests.fake_ollama.gate import StepGate
from tests.rawhttp import read_response
from tests.servers import ROOT, RunningGateway, free_port, gateway_process

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url + "/admin/api", headers=gateway.auth, timeout=10) as client:
        yield client


def _tags(gateway: RunningGateway, key: str) -> int:
    return httpx.get(gateway.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}).status_code


def test_a_key_created_rotated_and_revoked_through_the_api_acts_at_once(
    gateway: RunningGateway, admin: httpx.Client
) -> None:
    created = admin.post(
        "/keys", json={"name": "alice", "models": ["llama3*"], "limits": {"rpm": 60, "tpd": "unlimited"}}
    )
    assert created.status_code == 201
    body = created.json()
    secret = body.pop("key")
    assert secret.startswith(f"ogw_{body['id']}_")
    assert body["limits"] == {
        "rpm": 60,
        "tpm": "default",
        "tpd": "unlimited",
        "concurrency": "default",
        "weight": "default",
    }
    assert (body["name"], body["status"], body["scopes"], body["models"]) == (
        "alice",
        "active",
        ["inference", "read"],
        ["llama3*"],
    )
    assert _tags(gateway, secret) == 200

    listed = admin.get("/keys").json()
    assert [item["name"] for item in listed] == ["alice", "test-admin-0"]
    assert all("key" not in item and "digest" not in item for item in listed)
    assert secret not in admin.get("/keys").text
    # When a key was last used reaches the store in the background, every key refresh interval.
    deadline = time.monotonic() + 10
    while (alice := admin.get("/keys").json()[0])["last_used_at"] is None:
        assert time.monotonic() < deadline, "alice's use never recorded"
        time.sleep(0.01)
    assert alice == {**body, "last_used_at": alice["last_used_at"]}
    assert admin.get(f"/keys/{body['id']}").json() == alice

    rotated = admin.post(f"/keys/{body['id']}/rotate")
    assert rotated.status_code == 200
    new_secret = rotated.json()["key"]
    assert new_secret != secret
    # The admin API makes this server look at the store before answering: no refresh interval.
    assert _tags(gateway, secret) == 401
    assert _tags(gateway, new_secret) == 200

    revoked = admin.post(f"/keys/{body['id']}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert "key" not in revoked.json()
    assert _tags(gateway, new_secret) == 401


def test_update_changes_only_what_it_names(admin: httpx.Client) -> None:
    key_id = admin.post("/keys", json={"name": "bob", "models": ["qwen3"], "limits": {"rpm": 5}}).json()["id"]
    updated = admin.patch(f"/keys/{key_id}", json={"limits": {"tpm": 1000, "weight": 3}, "admin": True})
    assert updated.status_code == 200
    assert updated.json()["limits"] == {"rpm": 5, "tpm": 1000, "tpd": "default", "concurrency": "default", "weight": 3}
    assert updated.json()["scopes"] == ["admin", "inference", "read"]
    assert updated.json()["models"] == ["qwen3"]
    assert updated.json()["expires_at"] is None
    cleared = admin.patch(f"/keys/{key_id}", json={"models": [], "expires": "2030-01-31"}).json()
    assert (cleared["models"], cleared["expires_at"]) == ([], "2030-01-31T00:00:00Z")
    assert admin.patch(f"/keys/{key_id}", json={"expires": "never"}).json()["expires_at"] is None


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"name": "x", "limits": {"rpm": "lots"}}, 400, "'lots' is not a number, 'unlimited' or 'default'"),
        ({"name": "x", "limits": {"rpm": -1}}, 400, "'-1' is not a number, 'unlimited' or 'default'"),
        ({"name": "x", "limits": {"weight": 0}}, 400, "'0' is not a weight from 1 to 100 or 'default'"),
        ({"name": "x", "limits": {"rps": 1}}, 400, "'rps' is not a limit (one of rpm, tpm, tpd, concurrency, weight)"),
        ({"name": "x", "models": ["bad name!"]}, 400, "'bad name!' is not a valid model name or glob"),
        ({"name": "x", "scopes": ["root"]}, 400, "'root' is not a scope (one of inference, read, admin)"),
        ({"name": "x", "expires": "soon"}, 400, "'soon' is not a duration (30d, 12h) or a date (2027-01-31)"),
        ({"name": " padded"}, 400, "a key name is 1 to 64 printable characters without surrounding spaces"),
        ({"name": "x", "limits": {"rpm": True}}, 400, None),
        ({"name": "x", "colour": "red"}, 400, None),
        ({}, 400, None),
        ({"name": "test-admin-0"}, 409, "a key named 'test-admin-0' already exists"),
    ],
)
def test_invalid_requests_get_the_clis_rules_in_the_api_dialect(
    admin: httpx.Client, body: dict[str, object], status: int, message: str | None
) -> None:
    response = admin.post("/keys", json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert list(response.json()) == ["error"]
    if message is not None:
        assert response.json()["error"] == message
    assert [item["name"] for item in admin.get("/keys").json()] == ["test-admin-0"]


def test_the_cli_refuses_with_the_same_message(database_url: str, admin: httpx.Client) -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "create", "x", "--weight", "0"],
        env={"GATEWAY_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    api = admin.post("/keys", json={"name": "x", "limits": {"weight": 0}}).json()["error"]
    assert cli.returncode == 2
    assert api in cli.stderr


def test_unknown_keys_and_broken_bodies(admin: httpx.Client) -> None:
    for method, path in (("GET", "/keys/nope"), ("POST", "/keys/nope/rotate"), ("POST", "/keys/nope/revoke")):
        response = admin.request(method, path)
        assert (response.status_code, response.json()) == (404, {"error": "no key with id 'nope'"})
    assert admin.patch("/keys/nope", json={}).status_code == 404
    assert admin.get("/keys/bad%20id").status_code == 400
    invalid = admin.post("/keys", content=b'{"name": ', headers={"content-type": "application/json"})
    assert (invalid.status_code, invalid.json()) == (400, {"error": "request body is not valid JSON"})
    huge = admin.post("/keys", json={"name": "x", "models": ["m"] * 20_000})
    assert (huge.status_code, huge.json()) == (413, {"error": "request body is larger than 65536 bytes"})

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "chunked", "models": ['
        for _ in range(20_000):
            yield b'"m",'
        yield b'"m"]}'

    chunked = admin.post("/keys", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert admin.post("/keys", json={"name": "ok"}).status_code == 201


def test_a_listing_is_searched_and_paged_by_the_server(admin: httpx.Client, database_url: str) -> None:
    for name in ("team_a", "team-b", "other"):
        issue_key(database_url, name)
    admin.post(f"/keys/{admin.get('/keys', params={'q': 'other'}).json()[0]['id']}/revoke")
    every = admin.get("/keys")
    names = [item["name"] for item in every.json()]
    assert names == sorted(names)
    assert every.headers["x-total-count"] == str(len(names)) == "4"  # with the test's own admin key
    page = admin.get("/keys", params={"limit": 2, "offset": 1})
    assert [item["name"] for item in page.json()] == names[1:3]
    assert page.headers["x-total-count"] == "4"
    found = admin.get("/keys", params={"q": "TEAM _", "limit": 10})
    assert ([item["name"] for item in found.json()], found.headers["x-total-count"]) == (["team_a"], "1")
    revoked = admin.get("/keys", params={"status": "revoked"})
    assert [item["name"] for item in revoked.json()] == ["other"]
    assert admin.get("/keys", params={"q": "nothing"}).json() == []
    # A word said twice is one word; past the last page, nothing (and still the count).
    assert [item["name"] for item in admin.get("/keys", params={"q": " ".join(["team"] * 12)}).json()] == [
        "team-b",
        "team_a",
    ]
    beyond = admin.get("/keys", params={"offset": 10, "limit": 5})
    assert (beyond.json(), beyond.headers["x-total-count"]) == ([], "4")
    # A page's entries are the whole listing's, field for field.
    assert page.json() == every.json()[1:3]
    # An out-of-range parameter is refused, in the API's dialect.
    for params, error in (
        ({"limit": "0"}, "query.limit: input should be greater than or equal to 1"),
        ({"limit": "1001"}, "query.limit: input should be less than or equal to 1000"),
        ({"offset": "-1"}, "query.offset: input should be greater than or equal to 0"),
        ({"status": "gone"}, "query.status: input should be 'active', 'expired' or 'revoked'"),
        ({"q": "x" * 201}, "query.q: string should have at most 200 characters"),
        ({"q": " ".join(f"w{n}" for n in range(9))}, "query.q: value error, at most 8 different words"),
    ):
        refused = admin.get("/keys", params=params)
        assert (refused.status_code, refused.json()) == (400, {"error": error}), params


def test_only_admin_keys_get_in(gateway: RunningGateway, database_url: str) -> None:
    url = gateway.url + "/admin/api/keys"
    missing = httpx.get(url)
    assert (missing.status_code, missing.json()) == (401, {"error": "invalid or missing API key"})
    assert missing.headers["www-authenticate"] == 'Bearer realm="ollama-gateway"'
    user = issue_key(database_url, "user", scopes=frozenset({Scope.INFERENCE, Scope.READ}))
    forbidden = httpx.get(url, headers={"Authorization": f"Bearer {user}"})
    assert forbidden.status_code == 403
    assert forbidden.json() == {"error": "this API key lacks the 'admin' scope required for /admin/api/keys"}
    # A cookie never authenticates (so no other site can make a browser act for an admin).
    assert httpx.get(url, cookies={"session": gateway.key, "key": gateway.key}).status_code == 401
    # Nor a key in the query string.
    assert httpx.get(url, params={"key": gateway.key, "api_key": gateway.key}).status_code == 401
    assert httpx.post(url, json={"name": "sneaky"}, headers={"Authorization": f"Bearer {user}"}).status_code == 403


def test_failures_on_the_admin_api_lock_an_address_out(make_gateway: Callable[..., RunningGateway]) -> None:
    gateway = make_gateway(auth_failure_limit=3, auth_failure_window=60)
    for _ in range(3):
        assert (
            httpx.get(gateway.url + "/admin/api/keys", headers={"Authorization": "Bearer ogw_x_y"}).status_code == 401
        )
    locked = httpx.get(gateway.url + "/admin/api/keys", headers={"Authorization": "Bearer ogw_x_y"})
    assert locked.status_code == 429
    assert locked.json()["error"].startswith("too many failed")
    # The right key from the same address is never refused for the wrong ones.
    assert httpx.get(gateway.url + "/admin/api/keys", headers=gateway.auth).status_code == 200


def test_security_headers_on_the_api_and_the_page(gateway: RunningGateway, admin: httpx.Client) -> None:
    for response, cache in (
        (admin.get("/keys"), "no-store"),
        (httpx.get(gateway.url + "/admin/api/keys"), "no-store"),  # a refusal too
        (httpx.get(gateway.url + "/admin/"), "no-cache"),
        (httpx.get(gateway.url + "/admin/static/app.js"), "no-cache"),
    ):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self';" in csp
        assert "'unsafe-inline'" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == cache
        assert "set-cookie" not in response.headers
        assert "access-control-allow-origin" not in response.headers
    created = admin.post("/keys", json={"name": "once"})
    assert created.headers["cache-control"] == "no-store"


def test_the_page_runs_no_inline_script(gateway: RunningGateway) -> None:
    page = httpx.get(gateway.url + "/admin/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    assert html.count("<script") == 2
    assert '<script src="static/uPlot.iife.min.js" defer></script>' in html
    assert '<script type="module" src="static/app.js"></script>' in html
    assert " on" not in html.replace(" on ", "").split("<body", 1)[1].split("=")[0]
    assert "style=" not in html
    assert "http://" not in html  # nothing from elsewhere
    assert "https://" not in html
    js = httpx.get(gateway.url + "/admin/static/uPlot.iife.min.js")
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert js.text.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    assert "MIT" in httpx.get(gateway.url + "/admin/static/uPlot.LICENSE").text
    assert httpx.get(gateway.url + "/admin", follow_redirects=False).status_code in (307, 308)


@pytest.mark.parametrize(
    "path",
    [
        "/admin/static/../__init__.py",
        "/admin/static/..%2f__init__.py",
        "/admin/static/%2e%2e%2fhardening.py",
        "/admin/static/..%5c__init__.py",
        "/admin/static/static.py",
        "/admin/static/",
        "/admin/static/index.html%00.js",
        "/admin/static/app.js/",
        "/admin/../gateway/admin/static.py",
        "/admin/%2e%2e/pyproject.toml",
    ],
)
def test_static_files_are_a_fixed_list(gateway: RunningGateway, path: str) -> None:
    # Sent as raw bytes: an HTTP client would tidy the dot segments away before they reach us.
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
        response = read_response(sock)
    assert response.status in (400, 404)
    assert b"import" not in response.body
    assert b"[project]" not in response.body


def test_the_openapi_description_holds_only_the_admin_routes(admin: httpx.Client, gateway: RunningGateway) -> None:
    assert httpx.get(gateway.url + "/admin/api/openapi.json").status_code == 401
    spec = admin.get("/openapi.json").json()
    assert spec["servers"] == [{"url": "/admin"}]
    assert sorted(spec["paths"]) == [
        "/api/connect",
        "/api/connect/pending",
        "/api/keys",
        "/api/keys/{key_id}",
        "/api/keys/{key_id}/revoke",
        "/api/keys/{key_id}/rotate",
        "/api/live",
        "/api/usage",
        "/api/usage/daily",
    ]
    assert set(spec["paths"]["/api/keys/{key_id}"]) == {"get", "patch"}
    # The statuses and the one error shape the API really answers with (no FastAPI 422).
    always = {"401", "403", "413", "429", "500", "503"}
    assert set(spec["paths"]["/api/keys"]["post"]["responses"]) == {"201", "400", "409", *always}
    rotate = spec["paths"]["/api/keys/{key_id}/rotate"]["post"]["responses"]
    assert set(rotate) == {"200", "400", "404", "409", *always}  # 400: an impossible id
    revoke = spec["paths"]["/api/keys/{key_id}/revoke"]["post"]["responses"]
    assert set(revoke) == {"200", "400", "404", *always}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]


def test_the_admin_surface_can_be_switched_off(make_gateway: Callable[..., RunningGateway]) -> None:
    gateway = make_gateway(admin_ui=False)
    for path in ("/admin/", "/admin/api/keys", "/admin/static/app.js"):
        response = httpx.get(gateway.url + path, headers=gateway.auth)
        assert (response.status_code, response.json()) == (404, {"error": "not found"})
    assert httpx.get(gateway.url + "/api/tags", headers=gateway.auth).status_code == 200


def test_usage_matches_the_cli_report(gateway: RunningGateway, admin: httpx.Client, database_url: str) -> None:
    store = open_usage_store(database_url)
    store.add(
        {
            UsageKey("2026-01-01", "k1", "alice", "llama3.2:latest"): UsageCounts(3, 30, 12, 1),
            UsageKey("2026-01-01", "k2", "=bob", "qwen3:latest"): UsageCounts(1, 5, 2, 0),
            UsageKey("2026-01-02", "k1", "alice", "qwen3:latest"): UsageCounts(2, 20, 8, 0),
            UsageKey("2026-01-03", "k1", "alice", ""): UsageCounts(1, 0, 0, 1),
        }
    )
    store.close()
    for args, params in (
        ((), {}),
        (("--by", "model", "--since", "2026-01-02"), {"by": "model", "since": "2026-01-02"}),
        (
            ("--by", "day", "--key", "alice", "--until", "2026-01-02"),
            {"by": "day", "key": "alice", "until": "2026-01-02"},
        ),
    ):
        cli = subprocess.run(
            [sys.executable, "-m", "gateway", "usage", "--json", *args],
            env={"GATEWAY_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        assert admin.get("/usage", params=params).json() == json.loads(cli.stdout)
    csv = admin.get("/usage", params={"by": "key", "format": "csv"})
    assert csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv.headers["content-disposition"] == 'attachment; filename="usage-by-key.csv"'
    # A name that a spreadsheet would run as a formula is quoted.
    assert csv.text == ("key,requests,prompt_tokens,completion_tokens,errors\n'=bob,1,5,2,0\nalice,6,50,20,2\n")
    assert admin.get("/usage/daily", params={"stack": "model"}).json() == {
        "stack": "model",
        "days": ["2026-01-01", "2026-01-02", "2026-01-03"],
        "truncated": False,
        "series": [
            {"name": None, "tokens": [0, 0, 0]},
            {"name": "llama3.2:latest", "tokens": [42, 0, 0]},
            {"name": "qwen3:latest", "tokens": [7, 28, 0]},
        ],
    }
    bad = admin.get("/usage", params={"since": "2026-01-03", "until": "2026-01-01"})
    assert (bad.status_code, bad.json()) == (400, {"error": "since 2026-01-03 is after until 2026-01-01"})
    assert admin.get("/usage", params={"since": "yesterday"}).json() == {
        "error": "'yesterday' is not a date (expected YYYY-MM-DD, e.g. 2026-01-31)"
    }
    assert admin.get("/usage", params={"by": "colour"}).json() == {
        "error": "'colour' is not a grouping (one of key, model, day)"
    }


def test_live_state_shows_requests_in_flight_and_refusals(
    gateway: RunningGateway, admin: httpx.Client, fake: FakeOllama, database_url: str
) -> None:
    key = issue_key(database_url, "streamer")
    gate = StepGate(timeout=10)
    fake.behaviour = Behaviour(tokens=3, gate=gate)
    assert httpx.get(gateway.url + "/api/tags", headers={"Authorization": "Bearer ogw_bad_key"}).status_code == 401
    started = threading.Event()
    statuses: list[int] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            gateway.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "hi"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ) as response:
            statuses.append(response.status_code)
            started.set()
            for _ in response.iter_lines():
                pass

    worker = threading.Thread(target=stream)
    worker.start()
    try:
        assert started.wait(10)
        live = admin.get("/live").json()
        assert live["in_flight"] == 1
        assert live["keys"] == [{"key_id": key.split("_")[1], "key_name": "streamer", "in_flight": 1, "queued": 0}]
        assert live["queue"] == {"waiting": 0, "oldest_wait_s": 0.0, "capacity": 4}
        assert [(item["state"], item["in_flight"]) for item in live["upstreams"]] == [("up", 1)]
        refusal = live["refusals"][0]
        assert (refusal["status"], refusal["outcome"], refusal["path"], refusal["key_id"]) == (
            401,
            "unauthorized",
            "/api/tags",
            None,
        )
    finally:
        gate.release(10)
        worker.join(10)
    assert statuses == [200]
    assert admin.get("/live").json()["keys"] == []


def test_every_admin_action_is_an_audit_line_without_secrets(
    make_gateway: Callable[..., RunningGateway], capfd: pytest.CaptureFixture[str]
) -> None:
    gateway = make_gateway(log_format="json")
    with httpx.Client(base_url=gateway.url + "/admin/api", headers=gateway.auth) as admin:
        created = admin.post("/keys", json={"name": "carol"}).json()
        rotated = admin.post(f"/keys/{created['id']}/rotate").json()
        admin.post(f"/keys/{created['id']}/revoke")
        admin.get("/live")
        httpx.get(gateway.url + "/admin/api/keys", headers={"Authorization": f"Bearer {rotated['key']}"})
    out = capfd.readouterr().out
    for secret in (created["key"], rotated["key"], gateway.key):
        assert secret not in out
    audit = [json.loads(line) for line in out.splitlines() if '"type":"audit"' in line]
    admin_id = gateway.key.split("_")[1]
    assert [(line["action"], line["target"], line["status"], line["key_id"]) for line in audit] == [
        ("keys.create", created["id"], 201, admin_id),
        ("keys.rotate", created["id"], 200, admin_id),
        ("keys.revoke", created["id"], 200, admin_id),
        ("GET /admin/api/keys", None, 401, None),
    ]
    assert all(line["client"] == "127.0.0.1" and len(line["request_id"]) == 32 for line in audit)


def test_a_separate_admin_address_serves_it_only_there(tmp_path: Path, fake: FakeOllama) -> None:
    database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    key = issue_key(database_url, "root", scopes=frozenset(Scope))
    admin_port = free_port()
    env = {
        "GATEWAY_UPSTREAM_URL": fake.url,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_ADMIN_ADDRESS": f"127.0.0.1:{admin_port}",
        "GATEWAY_AUTH_FAILURE_LIMIT": "3",
    }
    with gateway_process(env, cwd=tmp_path) as process:
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.get(process.url + "/admin/api/keys", headers=auth).status_code == 404
        assert httpx.get(process.url + "/admin/", headers=auth).status_code == 404
        side = f"http://127.0.0.1:{admin_port}"
        deadline = time.monotonic() + 10
        while True:  # the side listener starts beside the main one
            try:
                listed = httpx.get(side + "/admin/api/keys", headers=auth)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the admin listener did not start"
                time.sleep(0.05)
        assert listed.status_code == 200
        assert [item["name"] for item in listed.json()] == ["root"]
        assert httpx.get(side + "/admin/api/keys").status_code == 401
        assert httpx.get(side + "/admin/").headers["x-frame-options"] == "DENY"
        assert httpx.get(side + "/api/tags", headers=auth).status_code == 404
        assert httpx.get(side + "/admin/api/keys", headers=auth).headers["x-request-id"]
        # Forwarded headers from an untrusted peer name no other client: its failures count for it.
        for n in range(3):
            spoofed = {"Authorization": "Bearer ogw_bad_key", "X-Forwarded-For": f"203.0.113.{n}"}
            assert httpx.get(side + "/admin/api/keys", headers=spoofed).status_code == 401
        assert httpx.get(side + "/admin/api/keys", headers=spoofed).status_code == 429


def test_without_a_key_nothing_about_a_body_is_told(gateway: RunningGateway) -> None:
    for content in (b'{"name": ', b'{"name": "x", "limits": {"rpm": "lots"}}', b"[]"):
        response = httpx.post(
            gateway.url + "/admin/api/keys", content=content, headers={"content-type": "application/json"}
        )
        assert (response.status_code, response.json()) == (401, {"error": "invalid or missing API key"})


def test_every_file_of_the_page_is_served_and_nothing_else(gateway: RunningGateway) -> None:
    on_disk = {path.name for path in (Path(gateway_admin.__file__).parent / "static").iterdir()}
    assert served() == on_disk
    for name in sorted(on_disk - {"index.html"}):
        response = httpx.get(f"{gateway.url}/admin/static/{name}")
        assert response.status_code == 200, name
        assert response.content == (Path(gateway_admin.__file__).parent / "static" / name).read_bytes()
        if not name.startswith("uPlot") and name != "favicon.svg":
            # Our own files load nothing from elsewhere: the page works offline.
            assert b"http:" not in response.content, name
            assert b"https:" not in response.content, name
            assert b"//cdn" not in response.content, name


def test_live_state_shows_the_queue(make_gateway: Callable[..., RunningGateway], fake: FakeOllama) -> None:
    gateway = make_gateway(upstream_concurrency=1)
    gate = StepGate(timeout=20)
    fake.behaviour = Behaviour(tokens=2, gate=gate)
    statuses: list[int] = []

    def generate() -> None:
        with httpx.stream(
            "POST",
            gateway.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "hi"},
            headers=gateway.auth,
            timeout=20,
        ) as response:
            for _ in response.iter_lines():
                pass
            statuses.append(response.status_code)

    workers = [threading.Thread(target=generate) for _ in range(2)]
    with httpx.Client(base_url=gateway.url + "/admin/api", headers=gateway.auth, timeout=10) as admin:
        try:
            for worker in workers:
                worker.start()
            deadline = time.monotonic() + 10
            while True:  # one holds the only slot, the other waits for it
                queue = admin.get("/live").json()["queue"]
                if queue["waiting"] == 1 and queue["oldest_wait_s"] > 0:
                    break
                assert time.monotonic() < deadline, queue
            assert queue["capacity"] == 1
            assert admin.get("/live").json()["keys"][0]["in_flight"] == 1
        finally:
            gate.release(10)
            for worker in workers:
                worker.join(20)
        assert statuses == [200, 200]
        assert admin.get("/live").json()["queue"] == {"waiting": 0, "oldest_wait_s": 0.0, "capacity": 1}
