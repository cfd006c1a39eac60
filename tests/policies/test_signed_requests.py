"""The ``ollama`` command's own signed requests through the gateway: every route it uses, every
way a signature can be wrong, the sign-in flow for an unknown key, ``/api/me`` and sign-out, under
the gateway key the public key belongs to."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.keys.management import KeyAdmin, KeyChange
from gateway.keys.ollamakey import OllamaKey
from gateway.keys.store import Limits, Scope, open_keystore
from tests.conftest import ALL_SCOPES, issue_key
from tests.fake_ollama import Behaviour, FakeOllama
from tests.ollama_signer import USER_AGENT, OllamaSigner, fingerprint_of, make_key, signin_url
from tests.servers import RunningGateway

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def attach(database_url: str, name: str, signer: OllamaSigner) -> None:
    store = open_keystore(database_url)
    try:
        admin = KeyAdmin(store)
        admin.update(admin.get(name).id, KeyChange(add_ollama_keys=(signer.line,)))
    finally:
        store.close()


@pytest.fixture
def signer(tmp_path: Path) -> OllamaSigner:
    return OllamaSigner(make_key(tmp_path / "alice", "alice@laptop"))


@pytest.fixture
def stranger(tmp_path: Path) -> OllamaSigner:
    return OllamaSigner(make_key(tmp_path / "stranger", "bob@desktop"))


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway(
        public_url="https://gpu.example.com",
        usage_flush_interval=0.05,
        auth_failure_limit=3,
        trusted_proxies=("127.0.0.1",),
    )


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        yield http


@pytest.fixture
def alice(database_url: str, signer: OllamaSigner) -> OllamaSigner:
    issue_key(database_url, "alice", scopes=ALL_SCOPES)
    attach(database_url, "alice", signer)
    return signer


def _forwarded_cleanly(fake: FakeOllama) -> None:
    # Neither the credential nor the signature's timestamp reaches Ollama.
    for request in fake.requests:
        assert request.header("authorization") is None
        assert "ts=" not in request.query


def test_every_route_the_ollama_command_uses(
    gateway: RunningGateway, client: httpx.Client, fake: FakeOllama, alice: OllamaSigner
) -> None:
    assert alice.request(client, "HEAD", "/").status_code == 200
    assert alice.request(client, "GET", "/").text == "Ollama is running"
    assert set(alice.request(client, "GET", "/api/version").json()) == {"version"}
    assert "models" in alice.request(client, "GET", "/api/tags").json()
    assert "models" in alice.request(client, "GET", "/api/ps").json()
    assert alice.request(client, "POST", "/api/show", {"model": "llama3.2"}).status_code == 200
    for path, body in (("/api/chat", CHAT), ("/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": True})):
        with alice.stream(client, "POST", path, body) as response:
            lines = list(response.iter_lines())
        assert response.status_code == 200
        assert '"done":true' in lines[-1]
    with alice.stream(client, "POST", "/api/pull", {"model": "llama3.2"}) as response:
        progress = list(response.iter_lines())
    assert progress[-1] == '{"status":"success"}'
    # `ollama create` from local weights: the blob first (HEAD, then the upload), then the model.
    weights = b"GGUF" + bytes(60)
    digest = "sha256:" + hashlib.sha256(weights).hexdigest()
    assert alice.request(client, "HEAD", f"/api/blobs/{digest}").status_code == 404
    target, headers = alice.prepare("POST", f"/api/blobs/{digest}")
    assert client.post(target, content=weights, headers=headers).status_code == 201
    with alice.stream(client, "POST", "/api/create", {"model": "mine", "files": {"w.gguf": digest}}) as response:
        assert list(response.iter_lines())[-1] == '{"status":"success"}'
    assert (
        alice.request(client, "POST", "/api/copy", {"source": "llama3.2", "destination": "copied"}).status_code == 200
    )
    assert alice.request(client, "DELETE", "/api/delete", {"model": "copied"}).status_code == 200
    _forwarded_cleanly(fake)
    assert fake.requests[-1].path == "/api/delete"


def test_a_cancelled_generation_reaches_ollama(client: httpx.Client, fake: FakeOllama, alice: OllamaSigner) -> None:
    fake.behaviour = Behaviour(tokens=1000, token_delay=0.01)
    with alice.stream(client, "POST", "/api/chat", CHAT) as response:
        assert response.status_code == 200
        next(response.iter_lines())
    # Ctrl-C in `ollama run` closes the connection: Ollama sees its request end.
    request = fake.wait_for_request()
    assert request.client_disconnected.wait(5)


@pytest.mark.parametrize(
    "tamper",
    ["other_method", "other_path", "other_key", "stale", "future", "flipped", "no_ts", "two_ts"],
)
def test_every_wrong_signature_is_the_same_401(
    client: httpx.Client, fake: FakeOllama, alice: OllamaSigner, stranger: OllamaSigner, tamper: str
) -> None:
    now = int(time.time())
    target, headers = alice.prepare("GET", "/api/tags", ts=now)
    if tamper == "other_method":
        headers["Authorization"] = alice.authorization("POST", "/api/tags", now)
    elif tamper == "other_path":
        headers["Authorization"] = alice.authorization("GET", "/api/ps", now)
    elif tamper == "other_key":
        # Alice's public key with a signature the stranger made.
        headers["Authorization"] = alice.encoded + ":" + stranger.authorization("GET", "/api/tags", now).split(":")[1]
    elif tamper in ("stale", "future"):
        moved = now - 301 if tamper == "stale" else now + 301
        target, headers = alice.prepare("GET", "/api/tags", ts=moved)
    elif tamper == "flipped":
        key, _, signature = headers["Authorization"].partition(":")
        raw = bytearray(base64.b64decode(signature))
        raw[0] ^= 1
        headers["Authorization"] = key + ":" + base64.b64encode(bytes(raw)).decode()
    elif tamper == "no_ts":
        target = "/api/tags"
    else:
        target += f"&ts={now}"
    response = client.get(target, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid or missing API key"}
    assert fake.requests == []


def test_an_unknown_key_is_sent_to_sign_in_and_an_admin_can_grant_it(
    gateway: RunningGateway, client: httpx.Client, fake: FakeOllama, database_url: str, stranger: OllamaSigner
) -> None:
    refused = stranger.request(client, "POST", "/api/me", {})
    url = signin_url(refused)
    assert url is not None
    assert url.startswith("https://gpu.example.com/admin/#/connect?key=")
    token = url.rsplit("=", 1)[1]
    # The token is the public key line, encoded as Ollama encodes it for its own connect page (the
    # request carries the key alone, so the line has no comment).
    bare = " ".join(stranger.line.split()[:2])
    assert base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode() == bare
    # The admin sees who asked, with what the requests said about their client.
    with httpx.Client(base_url=gateway.url + "/admin/api", headers=gateway.auth, timeout=10) as admin:
        asked = admin.get("/connect", params={"key": token}).json()
        assert asked["fingerprint"] == fingerprint_of(stranger.public_file)
        assert asked["owner"] is None
        assert asked["request"]["user_agent"] == USER_AGENT
        assert asked["request"]["count"] == 1
        assert [item["fingerprint"] for item in admin.get("/connect/pending").json()] == [asked["fingerprint"]]
        created = admin.post("/keys", json={"name": "bob", "add_ollama_keys": [asked["line"]]})
        assert created.status_code == 201
        assert created.json()["ollama_keys"] == [{"fingerprint": asked["fingerprint"], "comment": ""}]
        # `ollama signin` again: signed in, as the key's name.
        me = stranger.request(client, "POST", "/api/me", {})
        assert (me.status_code, me.json()) == (200, {"name": "bob"})
        assert admin.get("/connect/pending").json() == []
        assert admin.get("/connect", params={"key": token}).json()["owner"] == {
            "id": created.json()["id"],
            "name": "bob",
        }
    assert fake.requests == []  # /api/me never reaches Ollama


def test_signout_detaches_the_key_that_signed_it(client: httpx.Client, database_url: str, alice: OllamaSigner) -> None:
    assert alice.request(client, "POST", "/api/me", {}).json() == {"name": "alice"}
    assert alice.request(client, "POST", "/api/signout").status_code == 200
    refused = alice.request(client, "POST", "/api/me", {})
    assert signin_url(refused) is not None
    store = open_keystore(database_url)
    try:
        assert store.get("alice").ollama_keys == ()
    finally:
        store.close()


def test_a_bearer_key_asks_who_it_is_too(gateway: RunningGateway, client: httpx.Client, fake: FakeOllama) -> None:
    me = client.post("/api/me", json={}, headers=gateway.auth)
    assert me.json() == {"name": "test-admin-0"}
    assert fake.requests == []


def test_the_gateway_key_decides_scopes_limits_and_revocation(
    client: httpx.Client, fake: FakeOllama, database_url: str, signer: OllamaSigner
) -> None:
    issue_key(database_url, "reader", scopes=frozenset({Scope.READ, Scope.INFERENCE}), limits=Limits(rpm=2))
    attach(database_url, "reader", signer)
    assert signer.request(client, "POST", "/api/pull", {"model": "llama3.2"}).status_code == 403
    # rpm=2, counted for the key.
    assert [signer.request(client, "GET", "/api/tags").status_code for _ in range(3)] == [200, 200, 429]
    store = open_keystore(database_url)
    try:
        admin = KeyAdmin(store)
        record = admin.get("reader")
        rotated = admin.rotate(record.id).record
        assert rotated.ollama_keys == record.ollama_keys  # rotation keeps them: they hold no secret
        admin.revoke(record.id)
    finally:
        store.close()
    deadline = time.monotonic() + 5
    status = 0
    while time.monotonic() < deadline and status != 401:
        status = signer.request(client, "GET", "/api/version").status_code
    assert status == 401


def test_usage_is_counted_under_the_gateway_key(
    gateway: RunningGateway, client: httpx.Client, fake: FakeOllama, alice: OllamaSigner
) -> None:
    fake.behaviour = Behaviour(tokens=3, prompt_eval_count=7)
    with alice.stream(client, "POST", "/api/chat", CHAT) as response:
        assert response.status_code == 200
        response.read()
    deadline = time.monotonic() + 5
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline and not rows:
        rows = httpx.get(gateway.url + "/admin/api/usage", params={"key": "alice"}, headers=gateway.auth).json()["rows"]
    assert [(row["key"], row["requests"], row["prompt_tokens"], row["completion_tokens"]) for row in rows] == [
        ("alice", 1, 7, 3)
    ]


def test_signed_requests_work_on_the_gateways_own_routes_and_failures_lock_out(
    gateway: RunningGateway, client: httpx.Client, alice: OllamaSigner, stranger: OllamaSigner
) -> None:
    assert alice.request(client, "GET", "/metrics").status_code == 200
    assert alice.request(client, "GET", "/admin/api/keys").status_code == 200
    # Wrong signatures count towards the lockout like wrong keys (limit 3 here)...
    office = {"X-Forwarded-For": "203.0.113.77"}
    statuses = []
    for _ in range(4):
        target, headers = stranger.prepare("GET", "/api/tags", ts=int(time.time()) - 3600)
        statuses.append(client.get(target, headers={**headers, **office}).status_code)
    assert statuses == [401, 401, 401, 429]
    # ...and a valid signature from that address still works.
    target, headers = alice.prepare("GET", "/api/tags")
    assert client.get(target, headers={**headers, **office}).status_code == 200


def test_a_public_key_belongs_to_one_key_at_most(database_url: str, signer: OllamaSigner) -> None:
    issue_key(database_url, "alice")
    issue_key(database_url, "bob")
    attach(database_url, "alice", signer)
    with pytest.raises(Exception, match="already belongs to the key 'alice'"):
        attach(database_url, "bob", signer)
    assert OllamaKey.from_line(signer.line).fingerprint == fingerprint_of(signer.public_file)


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args],
        env={**os.environ, "GATEWAY_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_cli_attaches_shows_and_detaches_ollama_keys(
    database_url: str, signer: OllamaSigner, stranger: OllamaSigner
) -> None:
    fingerprint = fingerprint_of(signer.public_file)
    created = _cli(database_url, "create", "alice", "--ollama-key", f"@{signer.public_file}", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["ollama_keys"] == [{"fingerprint": fingerprint, "comment": "alice@laptop"}]
    shown = _cli(database_url, "show", "alice")
    assert f"ollama_keys:  {fingerprint} alice@laptop" in shown.stdout.splitlines()
    # A public key belongs to one key at most.
    taken = _cli(database_url, "create", "bob", "--ollama-key", signer.line)
    assert taken.returncode == 1
    assert (
        taken.stderr.splitlines()[-1]
        == f"ollama-gateway: error: the Ollama key {fingerprint} already belongs to the key 'alice'"
    )
    # Not an Ed25519 key line: refused with the reason, nothing created.
    bad = _cli(database_url, "create", "carol", "--ollama-key", "ssh-rsa AAAAB3NzaC1yc2E= carol")
    assert bad.returncode == 2
    assert "not an ssh-ed25519 key" in bad.stderr
    added = _cli(database_url, "update", "alice", "--add-ollama-key", stranger.line)
    assert added.returncode == 0, added.stderr
    listed = json.loads(_cli(database_url, "list", "--json").stdout)
    assert [len(key["ollama_keys"]) for key in listed] == [2]
    removed = _cli(database_url, "update", "alice", "--remove-ollama-key", fingerprint, "--json")
    assert removed.returncode == 0, removed.stderr
    assert [key["comment"] for key in json.loads(removed.stdout)["ollama_keys"]] == ["bob@desktop"]
    unknown = _cli(database_url, "update", "alice", "--remove-ollama-key", fingerprint)
    assert unknown.returncode == 1
    assert f"has no Ollama key '{fingerprint}'" in unknown.stderr
