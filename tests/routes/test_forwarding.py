"""What the upstream receives: the same method, path, query and body, with the right headers."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fake_ollama import FakeOllama
from tests.servers import RunningGateway

pytestmark = pytest.mark.timeout(20)


def _headers(fake: FakeOllama) -> dict[str, str]:
    return dict(fake.wait_for_request().headers)


def test_upstream_never_sees_credentials_or_hop_by_hop_headers(gateway: RunningGateway, fake: FakeOllama) -> None:
    response = httpx.post(
        gateway.url + "/api/chat?trace=1",
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": False},
        headers={
            **gateway.auth,
            "X-API-Key": "sk-secret",
            "Cookie": "session=secret",
            "Origin": "https://app.example",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "X-Forwarded-For": "6.6.6.6",
            "X-Request-ID": "client-chosen-id",
            "User-Agent": "ollama-python/0.6.3",
        },
        timeout=10,
    )
    assert response.status_code == 200
    recorded = fake.wait_for_request()
    seen = dict(recorded.headers)
    for name in ("authorization", "x-api-key", "cookie", "origin", "x-hop", "keep-alive", "proxy-authorization"):
        assert name not in seen
    assert "secret" not in repr(recorded.headers)
    assert gateway.key not in repr(recorded.headers)
    assert seen["host"] == urlsplit(fake.url).netloc
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-request-id"] == "client-chosen-id"
    assert seen["user-agent"] == "ollama-python/0.6.3"
    assert recorded.query == "trace=1"
    assert response.headers["x-request-id"] == "client-chosen-id"


def test_forwarded_for_is_trusted_only_from_configured_proxies(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama
) -> None:
    trusting = make_gateway(trusted_proxies=("127.0.0.1",))
    httpx.get(
        trusting.url + "/api/tags",
        headers={**trusting.auth, "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
    )
    seen = _headers(fake)
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"


def test_no_content_type_and_chunked_bodies_are_accepted(gateway: RunningGateway, fake: FakeOllama) -> None:
    # curl -d sends a form content type; Ollama decodes JSON regardless.
    form = httpx.post(
        gateway.url + "/api/generate",
        content=b'{"model":"llama3.2","prompt":"x","stream":false}',
        headers={**gateway.auth, "Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert form.status_code == 200
    assert form.json()["done"] is True

    def chunks() -> Iterator[bytes]:
        yield b'{"model":"llama3.2",'
        yield b'"prompt":"x","stream":false}'

    chunked = httpx.post(gateway.url + "/api/generate", content=chunks(), headers=gateway.auth, timeout=10)
    assert chunked.status_code == 200
    assert fake.requests[-1].body == b'{"model":"llama3.2","prompt":"x","stream":false}'


def test_delete_with_a_json_body_and_head_requests(gateway: RunningGateway, fake: FakeOllama) -> None:
    deleted = httpx.request(
        "DELETE", gateway.url + "/api/delete", json={"model": "qwen3"}, headers=gateway.auth, timeout=10
    )
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert fake.requests[-1].method == "DELETE"
    assert fake.requests[-1].json == {"model": "qwen3"}
    for path in ("/", "/api/version", "/api/tags"):
        head = httpx.head(gateway.url + path, headers=gateway.auth, timeout=10)
        assert head.status_code == 200
        assert head.content == b""
    banner = httpx.get(gateway.url + "/", headers=gateway.auth, timeout=10)
    assert banner.text == "Ollama is running"


def test_blob_upload_round_trip(gateway: RunningGateway, fake: FakeOllama) -> None:
    data = b"model-weights" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.head(f"{gateway.url}/api/blobs/{digest}", headers=gateway.auth, timeout=10).status_code == 404
    created = httpx.post(f"{gateway.url}/api/blobs/{digest}", content=data, headers=gateway.auth, timeout=10)
    assert created.status_code == 201
    assert httpx.head(f"{gateway.url}/api/blobs/{digest}", headers=gateway.auth, timeout=10).status_code == 200
    wrong = httpx.post(f"{gateway.url}/api/blobs/sha256:{'0' * 64}", content=data, headers=gateway.auth, timeout=10)
    assert wrong.status_code == 400


def _raw_request(gateway: RunningGateway, target: bytes) -> bytes:
    parts = urlsplit(gateway.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            b"Authorization: Bearer " + gateway.key.encode() + b"\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.fixture(scope="module")
def _evil_server() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def evil(_evil_server: FakeOllama) -> FakeOllama:
    """Another upstream that no request may ever reach."""
    _evil_server.reset()
    return _evil_server


@pytest.mark.parametrize(
    "target",
    [
        b"//{evil}/api/tags",
        b"/api/..//{evil}/api/tags",
        b"/api/%2e%2e/%2e%2e/x",
        b"/api/%2E%2E%2Fx",
        b"/v1/..%2f..%2fx",
        b"/api\\..\\x",
        b"/api/tags%00",
        b"/api/%252e%252e/x",
        b"http://{evil}/api/tags",
        b"/api/tags@{evil}",
        b"/api/x/../../{evil}",
    ],
)
def test_no_path_reaches_another_host_or_path(
    gateway: RunningGateway, fake: FakeOllama, evil: FakeOllama, target: bytes
) -> None:
    target = target.replace(b"{evil}", urlsplit(evil.url).netloc.encode())
    response = _raw_request(gateway, target)
    status = int(response.split(b" ", 2)[1])
    assert evil.requests == []
    # Either refused, or forwarded to a plain path on the configured upstream.
    if status == 400:
        assert b"invalid request path" in response
    else:
        assert all(recorded.path.startswith(("/api/", "/v1/")) for recorded in fake.requests)
        assert all(".." not in recorded.path and "//" not in recorded.path for recorded in fake.requests)
