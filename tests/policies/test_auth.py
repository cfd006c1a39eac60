"""Nothing reaches Ollama without a valid key; every failure looks the same."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import ollama
import openai
import pytest

from gateway.errors import AuthThrottled, Unauthorized
from gateway.keys.keyring import MISS_RECHECK, Keyring, _Update
from gateway.keys.management import KeyAdmin
from gateway.keys.store import Scope, open_keystore
from gateway.policies.auth import Authenticator, RequestHead
from gateway.policies.lockout import Lockout
from gateway.proxy.clientaddr import ClientAddress
from tests.conftest import issue_key
from tests.fake_ollama import FakeOllama
from tests.servers import ROOT, RunningGateway

pytestmark = pytest.mark.timeout(30)

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
UNAUTHORIZED_NATIVE = {"error": "invalid or missing API key"}
UNAUTHORIZED_OPENAI = {
    "error": {
        "message": "invalid or missing API key",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


def test_official_clients_authenticate_with_their_own_options(
    gateway: RunningGateway, fake: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}) as through_headers:
        assert through_headers.list().models
    # ollama-python sends OLLAMA_API_KEY as a bearer token when no header is given.
    monkeypatch.setenv("OLLAMA_API_KEY", gateway.key)
    with ollama.Client(host=gateway.url) as from_env:
        assert from_env.chat(model="llama3.2", messages=CHAT["messages"]).done  # type: ignore[arg-type]
    monkeypatch.delenv("OLLAMA_API_KEY")
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as sdk:
        assert sdk.models.list().data
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="ollama", max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        wrong.models.list()
    assert caught.value.code == "invalid_api_key"
    assert fake.requests, "authenticated requests reached the upstream"


def test_x_api_key_and_basic_auth(gateway: RunningGateway, fake: FakeOllama) -> None:
    assert httpx.get(gateway.url + "/api/tags", headers={"X-API-Key": gateway.key}).status_code == 200
    assert httpx.get(gateway.url + "/api/tags", auth=("anyone", gateway.key)).status_code == 200
    basic = base64.b64encode(b"user:" + gateway.key.encode()).decode()
    assert httpx.get(gateway.url + "/api/version", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def _bad_credentials(gateway: RunningGateway, revoked: str, expired: str) -> list[dict[str, str]]:
    wrong_secret = gateway.key[:-4] + ("AAAA" if not gateway.key.endswith("AAAA") else "BBBB")
    return [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Token {gateway.key}"},
        {"Authorization": "Bearer ogw_aaaaaaaa_" + "A" * 43},
        {"Authorization": f"Bearer {wrong_secret}"},
        {"Authorization": f"Bearer {revoked}"},
        {"Authorization": f"Bearer {expired}"},
        {"Authorization": "Basic !!!notbase64"},
        {"X-API-Key": ""},
    ]


@pytest.mark.parametrize(
    ("path", "expected"), [("/api/chat", UNAUTHORIZED_NATIVE), ("/v1/chat/completions", UNAUTHORIZED_OPENAI)]
)
def test_every_bad_credential_gets_the_same_401(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str, path: str, expected: object
) -> None:
    expired = issue_key(database_url, "expired", expires_at=time.time() - 1)
    revoked = issue_key(database_url, "revoked")
    subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "revoke", "revoked"],
        env={"GATEWAY_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    gateway = make_gateway(auth_failure_limit=1000)
    for headers in _bad_credentials(gateway, revoked, expired):
        response = httpx.post(gateway.url + path, json=CHAT, headers=headers, timeout=10)
        assert response.status_code == 401, headers
        assert response.json() == expected
        assert response.headers["www-authenticate"] == 'Bearer realm="ollama-gateway"'
    # A key in the query string is never looked at.
    response = httpx.post(gateway.url + path + f"?api_key={gateway.key}", json=CHAT, timeout=10)
    assert response.status_code == 401
    assert fake.requests == []


def test_gateway_endpoints_need_no_key_and_reveal_nothing(gateway: RunningGateway, fake: FakeOllama) -> None:
    health = httpx.get(gateway.url + "/healthz")
    ready = httpx.get(gateway.url + "/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"upstream": "ok", "database": "ok"},
        "upstream": {"in_flight": 0, "queued": 0},  # a load, never the server's address
    }
    for body in (health.text, ready.text):
        assert "llama" not in body
        assert "ogw_" not in body


def test_new_and_rotated_keys_work_at_once(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str
) -> None:
    # The poll is 5 s away: only the look at the store on a miss can let these keys in.
    gateway = make_gateway(key_refresh_interval=5)
    key = issue_key(database_url, "fresh")
    assert httpx.get(gateway.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    store = open_keystore(database_url)
    try:
        rotated = KeyAdmin(store).rotate(store.get("fresh").id).secret
    finally:
        store.close()
    assert httpx.get(gateway.url + "/api/tags", headers={"Authorization": f"Bearer {rotated}"}).status_code == 200
    assert httpx.get(gateway.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}).status_code == 401


class _CountingKeyring(Keyring):
    looks = 0  # looks at the store's change counter

    def _refresh(self) -> _Update:
        self.looks += 1
        return super()._refresh()


async def test_unknown_key_ids_share_one_look_at_the_store_per_interval(database_url: str) -> None:
    keyring = _CountingKeyring(lambda: open_keystore(database_url), refresh_interval=5)
    await keyring.start()
    try:
        # Many requests with unknown ids at once share one look...
        started = time.monotonic()  # no later than the first look began
        await asyncio.gather(*(keyring.catch_up() for _ in range(50)))
        assert keyring.looks == 1
        # ...and those arriving right after it wait for the next one, which they share too.
        key = issue_key(database_url, "late")
        await asyncio.gather(*(keyring.catch_up() for _ in range(50)))
        assert keyring.looks == 2
        # The second look began no sooner than the interval after the first (timers may fire a
        # hair early).
        assert time.monotonic() - started >= MISS_RECHECK * 0.9
        assert keyring.get(key.split("_")[1]) is not None
    finally:
        await keyring.close()


async def test_a_locked_out_address_never_reaches_the_store(database_url: str) -> None:
    keyring = _CountingKeyring(lambda: open_keystore(database_url), refresh_interval=5)
    await keyring.start()
    authenticator = Authenticator(keyring, Lockout(limit=1, window=60))
    forged = RequestHead(
        "GET",
        "/api/tags",
        b"",
        [(b"authorization", b"Bearer ogw_abcdefgh_" + b"x" * 43)],
        ClientAddress("203.0.113.9", "http", "203.0.113.9"),
    )
    try:
        with pytest.raises(Unauthorized):
            await authenticator.authenticate(forged)
        assert keyring.looks == 1
        for _ in range(3):
            with pytest.raises(AuthThrottled):
                await authenticator.authenticate(forged)
        assert keyring.looks == 1
    finally:
        await keyring.close()


def test_revocation_and_rotation_reach_a_running_server(
    gateway: RunningGateway, fake: FakeOllama, database_url: str
) -> None:
    key = issue_key(database_url, "team")
    assert httpx.get(gateway.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}).status_code == 200

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "keys", *args],
            env={"GATEWAY_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )

    new_key = json.loads(cli("rotate", "team", "--json").stdout)["key"]
    assert new_key != key
    assert _status_within(gateway, key, 401, seconds=5)
    assert _status_within(gateway, new_key, 200, seconds=5)
    cli("revoke", "team")
    assert _status_within(gateway, new_key, 401, seconds=5)


def _status_within(gateway: RunningGateway, key: str, status: int, seconds: float) -> bool:
    """Poll until the running server answers ``status`` for ``key`` (bounded by ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = httpx.get(gateway.url + "/api/tags", headers={"Authorization": f"Bearer {key}"})
        if response.status_code == status:
            return True
        time.sleep(0.05)
    return False


WRONG = {"Authorization": "Bearer ogw_nope"}


def test_the_lockout_refuses_wrong_keys_and_never_a_valid_one(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(auth_failure_limit=3, auth_failure_window=60, trusted_proxies=("127.0.0.1",))
    office = {"X-Forwarded-For": "203.0.113.66"}

    def status(headers: dict[str, str], method: str = "GET", path: str = "/api/tags") -> int:
        return httpx.request(method, gateway.url + path, headers={**office, **headers}).status_code

    # Requests without a credential (the ollama CLI's heartbeat) are 401s that count for nothing.
    assert [status({}, "HEAD", "/") for _ in range(10)] == [401] * 10
    # A valid key between wrong ones does not reset their count, and is never refused itself.
    assert [status(headers) for headers in (WRONG, gateway.auth, WRONG, gateway.auth, WRONG)] == [
        401,
        200,
        401,
        200,
        401,
    ]
    locked = httpx.get(gateway.url + "/api/tags", headers={**office, **WRONG})
    assert locked.status_code == 429
    assert 55 <= int(locked.headers["retry-after"]) <= 60
    assert locked.json() == {"error": "too many failed authentication attempts; try again later"}
    assert status(gateway.auth) == 200
    assert status(WRONG, path="/metrics") == 429
    # One line per lock, naming the address and never a key; and a metric.
    lines = [record.getMessage() for record in caplog.records if record.name == "gateway.auth"]
    assert lines == ["locked out 203.0.113.66 for 60s: 3 failed authentications within 60s"]
    metrics = httpx.get(gateway.url + "/metrics", headers=gateway.auth).text
    assert "gateway_auth_lockouts_total 1.0" in metrics.splitlines()


def test_forwarded_hops_that_are_not_addresses_never_become_identities(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama
) -> None:
    gateway = make_gateway(auth_failure_limit=3, auth_failure_window=60, trusted_proxies=("127.0.0.1",))
    # Junk in X-Forwarded-For is dropped: every one of these counts for the proxy's own address.
    statuses = [
        httpx.get(gateway.url + "/api/tags", headers={"X-Forwarded-For": f"junk-{n}", **WRONG}).status_code
        for n in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    # Real addresses behind the proxy are their own identities (a port or brackets are allowed).
    for hop in ("198.51.100.7:5555", "[2001:db8::1]:443", "2001:db8::2"):
        response = httpx.get(gateway.url + "/api/tags", headers={"X-Forwarded-For": hop, **WRONG})
        assert response.status_code == 401


def test_cors_preflight_is_answered_without_a_key(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama
) -> None:
    gateway = make_gateway(cors_origins=("https://app.example",))
    preflight = httpx.options(
        gateway.url + "/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed = httpx.get(gateway.url + "/api/tags", headers={"Origin": "https://app.example", **gateway.auth})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in allowed.headers["access-control-expose-headers"]
    # Ollama never sees the Origin (it would refuse a foreign one with an empty 403).
    assert "origin" not in dict(fake.requests[-1].headers)
    foreign = httpx.get(gateway.url + "/api/tags", headers={"Origin": "https://evil.example", **gateway.auth})
    assert "access-control-allow-origin" not in foreign.headers
    refused = httpx.options(
        gateway.url + "/api/tags", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert refused.status_code == 401
    assert "access-control-allow-origin" not in refused.headers


def test_scopes_default_to_inference_and_read(database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "create", "plain", "--json"],
        env={"GATEWAY_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    created = json.loads(result.stdout)
    assert created["scopes"] == sorted([Scope.INFERENCE.value, Scope.READ.value])
    assert created["key"].startswith("ogw_" + created["id"] + "_")
