"""A key reaches only what it may: its scopes' routes, and its models under every spelling."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from gateway.keys.store import Scope
from gateway.ollama.jsonbody import JsonBody
from tests.conftest import ALL_SCOPES, issue_key
from tests.fake_ollama import FakeOllama
from tests.servers import RunningGateway

pytestmark = pytest.mark.timeout(30)

MESSAGES = [{"role": "user", "content": "hi"}]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("scopes", "method", "path", "body", "missing"),
    [
        (frozenset({Scope.READ}), "POST", "/api/chat", {"model": "llama3.2", "messages": MESSAGES}, "inference"),
        (frozenset({Scope.READ}), "POST", "/v1/embeddings", {"model": "llama3.2", "input": "x"}, "inference"),
        (frozenset({Scope.INFERENCE}), "GET", "/api/tags", None, "read"),
        (frozenset({Scope.INFERENCE}), "GET", "/v1/models", None, "read"),
        (frozenset({Scope.INFERENCE, Scope.READ}), "POST", "/api/pull", {"model": "llama3.2"}, "admin"),
        (frozenset({Scope.INFERENCE, Scope.READ}), "DELETE", "/api/delete", {"model": "llama3.2"}, "admin"),
        (frozenset({Scope.INFERENCE, Scope.READ}), "POST", "/api/copy", {"source": "a", "destination": "b"}, "admin"),
        (frozenset({Scope.INFERENCE, Scope.READ}), "HEAD", "/api/blobs/sha256:" + "0" * 64, None, "admin"),
        (frozenset({Scope.INFERENCE, Scope.READ}), "GET", "/api/status", None, "admin"),
        (frozenset({Scope.INFERENCE, Scope.READ}), "POST", "/api/future-route", {}, "admin"),
        (frozenset({Scope.INFERENCE, Scope.READ}), "GET", "/v1/files", None, "admin"),
    ],
)
def test_routes_need_their_scope(
    gateway: RunningGateway,
    fake: FakeOllama,
    database_url: str,
    scopes: frozenset[Scope],
    method: str,
    path: str,
    body: object,
    missing: str,
) -> None:
    key = issue_key(database_url, "limited", scopes=scopes)
    response = _wait_for_key(gateway, key, method, path, body)
    assert response.status_code == 403
    assert fake.requests == []
    if method == "HEAD":
        return
    message = response.json()["error"]
    text = message if isinstance(message, str) else message["message"]
    assert f"'{missing}' scope" in text
    if path.startswith("/v1/"):
        assert message["type"] == "permission_error"
        assert message["code"] == "permission_denied"
    assert fake.requests == []


def _wait_for_key(gateway: RunningGateway, key: str, method: str, path: str, body: object) -> httpx.Response:
    """The first answer that is not a 401 (the running server picks up new keys within a second)."""
    deadline = time.monotonic() + 5
    while True:
        response = httpx.request(method, gateway.url + path, json=body, headers=_bearer(key), timeout=10)
        if response.status_code != 401 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/experimental/web_search", {"query": "x"}),
        ("/api/user/keys/abc", None),
        ("/api/chat", {"model": "gpt-oss:120b-cloud", "messages": MESSAGES}),
        ("/api/generate", {"model": "qwen3-coder:cloud", "prompt": "x"}),
        ("/v1/chat/completions", {"model": "deepseek-v3.1:671b-cloud", "messages": MESSAGES}),
    ],
)
def test_cloud_identity_is_refused_even_for_admin_keys(
    gateway: RunningGateway, fake: FakeOllama, path: str, body: object
) -> None:
    response = httpx.post(gateway.url + path, json=body, headers=gateway.auth, timeout=10)
    assert response.status_code == 403
    assert "ollama.com account" in str(response.json())
    assert fake.requests == []


def test_cloud_can_be_enabled(make_gateway: Callable[..., RunningGateway], fake: FakeOllama) -> None:
    gateway = make_gateway(allow_cloud=True)
    body = {"model": "gpt-oss:120b-cloud", "messages": MESSAGES, "stream": False}
    response = httpx.post(gateway.url + "/api/chat", json=body, headers=gateway.auth, timeout=10)
    # Reaches the upstream (the fake has no such model).
    assert response.status_code == 404
    assert len(fake.requests) == 1


def test_a_multipart_transcription_is_forwarded_unread_for_an_unrestricted_key(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama
) -> None:
    """Its model is in a form the gateway does not parse: the body goes through as it came."""
    gateway = make_gateway(allow_cloud=True)
    files = {"file": ("a.wav", b"RIFF\x00\x01binary", "audio/wav")}
    response = httpx.post(
        gateway.url + "/v1/audio/transcriptions",
        data={"model": "whisper"},
        files=files,
        headers=gateway.auth,
        timeout=10,
    )
    # The fake has no such route: its own 404 is relayed (no gateway 400 about JSON).
    assert (response.status_code, response.text) == (404, "404 page not found")
    received = fake.wait_for_request()
    assert (received.header("content-type") or "").startswith("multipart/form-data; boundary=")
    assert received.body is not None
    assert b'name="model"\r\n\r\nwhisper' in received.body
    assert b"RIFF\x00\x01binary" in received.body


SPELLINGS_OF_LLAMA = [
    "llama3.2",
    "llama3.2:latest",
    "LLAMA3.2",
    "Llama3.2:Latest",
    "library/llama3.2",
    "library/llama3.2:latest",
    "registry.ollama.ai/library/llama3.2",
    "registry.ollama.ai/library/llama3.2:latest",
    "REGISTRY.OLLAMA.AI/Library/Llama3.2:LATEST",
    "https://registry.ollama.ai/library/llama3.2",
    "http://registry.ollama.ai/library/llama3.2:latest",
]


@pytest.fixture
def qwen_only(gateway: RunningGateway, fake: FakeOllama, database_url: str) -> str:
    key = issue_key(database_url, "qwen-only", models=("qwen3",), scopes=ALL_SCOPES)
    _wait_for_key(gateway, key, "GET", "/api/version", None)
    fake.reset()
    return key


@pytest.mark.parametrize("spelling", SPELLINGS_OF_LLAMA)
def test_no_spelling_of_a_forbidden_model_gets_through(
    gateway: RunningGateway, fake: FakeOllama, qwen_only: str, spelling: str
) -> None:
    for path, body in (
        ("/api/chat", {"model": spelling, "messages": MESSAGES}),
        ("/api/generate", {"model": spelling, "prompt": "x"}),
        ("/api/embed", {"model": spelling, "input": "x"}),
        ("/api/show", {"model": spelling}),
        ("/api/show", {"name": spelling}),
        ("/v1/chat/completions", {"model": spelling, "messages": MESSAGES}),
    ):
        response = httpx.post(gateway.url + path, json=body, headers=_bearer(qwen_only), timeout=10)
        assert response.status_code == 403, (path, body)
        assert "may not use model 'llama3.2:latest'" in response.text
    assert fake.requests == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"qwen3","MODEL":"llama3.2"}',
        b'{"model":"qwen3","model":"llama3.2"}',
        b'{"model":"qwen3","Model":"llama3.2","messages":[]}',
        b'{"model":"llama3.2","model":null}',
        b'{"mod\\u0065l":"llama3.2","model":null}',
        b'{"model":"qwen3","name":"llama3.2"}',
    ],
)
def test_go_decoder_tricks_do_not_get_through(
    gateway: RunningGateway, fake: FakeOllama, qwen_only: str, raw: bytes
) -> None:
    path = "/api/show" if b'"name"' in raw else "/api/chat"
    response = httpx.post(gateway.url + path, content=raw, headers=_bearer(qwen_only), timeout=10)
    assert response.status_code == 403
    assert fake.requests == []


def test_copy_checks_both_names_the_way_go_reads_them(
    gateway: RunningGateway, fake: FakeOllama, qwen_only: str
) -> None:
    # "\u017f" (long s) folds to "s" in Go's decoder: this is a second "source" key.
    raw = '{"source":"qwen3","\u017fource":"llama3.2","destination":"qwen3:copy"}'.encode()
    response = httpx.post(gateway.url + "/api/copy", content=raw, headers=_bearer(qwen_only), timeout=10)
    assert response.status_code == 403
    assert "llama3.2:latest" in response.text
    assert fake.requests == []


def test_allowed_model_is_forwarded_byte_for_byte(gateway: RunningGateway, fake: FakeOllama, qwen_only: str) -> None:
    raw = b'{"model": "Qwen3:Latest", "messages": [{"role": "user", "content": "\\u003chi\\u003e"}], "stream": false}'
    response = httpx.post(gateway.url + "/api/chat", content=raw, headers=_bearer(qwen_only), timeout=10)
    assert response.status_code == 200
    assert fake.requests[-1].body == raw
    models = httpx.get(gateway.url + "/v1/models/qwen3:latest", headers=_bearer(qwen_only), timeout=10)
    assert models.status_code == 200
    refused = httpx.get(gateway.url + "/v1/models/llama3.2", headers=_bearer(qwen_only), timeout=10)
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "request body is not valid JSON"),
        (b'["model", "llama3.2"]', "request body must be a JSON object"),
        (b'{"model": 42}', "'model' must be a string"),
        (b'{"model": "bad name!"}', "invalid model name 'bad name!'"),
    ],
)
def test_unreadable_bodies_are_400_never_forwarded(
    gateway: RunningGateway, fake: FakeOllama, qwen_only: str, raw: bytes, message: str
) -> None:
    native = httpx.post(gateway.url + "/api/chat", content=raw, headers=_bearer(qwen_only), timeout=10)
    assert (native.status_code, native.json()) == (400, {"error": message})
    compat = httpx.post(gateway.url + "/v1/chat/completions", content=raw, headers=_bearer(qwen_only), timeout=10)
    assert compat.status_code == 400
    assert compat.json()["error"]["message"] == message
    assert compat.json()["error"]["type"] == "invalid_request_error"
    assert fake.requests == []


def test_listings_show_only_permitted_models(gateway: RunningGateway, fake: FakeOllama, qwen_only: str) -> None:
    tags = httpx.get(gateway.url + "/api/tags", headers=_bearer(qwen_only), timeout=10).json()
    assert [model["model"] for model in tags["models"]] == ["qwen3:latest"]
    models = httpx.get(gateway.url + "/v1/models", headers=_bearer(qwen_only), timeout=10).json()
    assert [model["id"] for model in models["data"]] == ["qwen3:latest"]
    # Load one model of each kind, then the running list is filtered too.
    for name in ("qwen3", "llama3.2"):
        httpx.post(gateway.url + "/api/generate", json={"model": name}, headers=gateway.auth, timeout=10)
    running = httpx.get(gateway.url + "/api/ps", headers=_bearer(qwen_only), timeout=10).json()
    assert [model["model"] for model in running["models"]] == ["qwen3:latest"]
    everything = httpx.get(gateway.url + "/api/tags", headers=gateway.auth, timeout=10).json()
    assert len(everything["models"]) == len(fake.models)


def test_a_rewritten_body_keeps_the_model_that_was_checked(
    gateway: RunningGateway, fake: FakeOllama, database_url: str
) -> None:
    # The gateway rewrites /v1 streaming bodies (to ask for usage); the rewrite must not let a
    # spelling that was not checked become the one Ollama reads.
    key = issue_key(database_url, "llama-only", models=("llama3.2",))
    _wait_for_key(gateway, key, "GET", "/api/version", None)
    raw = (
        b'{"MODEL":"qwen3","model":"qwen3","MODEL":"llama3.2","stream":true,'
        b'"messages":[{"role":"user","content":"x"}],"model":null}'
    )
    response = httpx.post(gateway.url + "/v1/chat/completions", content=raw, headers=_bearer(key), timeout=10)
    assert response.status_code == 200
    # The client's members as they came, one appended: Go reads the model that was checked.
    assert fake.requests[-1].body == raw[:-1] + b',"stream_options":{"include_usage":true}}'
    forwarded = JsonBody.parse(fake.requests[-1].body or b"")
    assert forwarded.string("model") == "llama3.2"
    assert forwarded.get("stream_options") == {"include_usage": True}
    # And the usage the gateway asked for is not shown to the client.
    assert b'"choices":[]' not in response.content
    assert response.content.endswith(b"data: [DONE]\n\n")
