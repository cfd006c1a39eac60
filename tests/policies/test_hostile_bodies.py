"""Bodies a key holder can send to hurt the gateway: nested as deep as the parser allows, or with
strings that cannot be written as UTF-8. Each is answered as Ollama would answer it, counted by
the limits like any request, and never a 500."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest

from gateway.keys.store import Limits
from tests.conftest import issue_key
from tests.fake_ollama import FakeOllama
from tests.servers import RunningGateway, gateway_process

# Deeper than Python's recursion limit allows a recursive walk, shallower than the parser's limit.
DEPTH = 900


def nested(text: str) -> str:
    return "[" * DEPTH + json.dumps(text) + "]" * DEPTH


@pytest.fixture
def go_depth() -> Iterator[None]:
    """Go's decoder takes 10,000 levels; the fake (in this process) decodes recursively, so it
    gets the stack for that here. The gateway runs as its own process, with Python's default."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(DEPTH * 4)
    yield
    sys.setrecursionlimit(before)


@pytest.mark.usefixtures("go_depth")
def test_deeply_nested_text_is_forwarded_and_counted_by_the_limits(fake: FakeOllama, database_url: str) -> None:
    key = issue_key(database_url, "nester", limits=Limits(rpm=3))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    bodies = [
        '{"model":"llama3.2","stream":false,"prompt":' + nested("hi") + "}",
        '{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":' + nested("hi") + "}]}",
    ]
    env = {"GATEWAY_UPSTREAM_URL": fake.url, "GATEWAY_DATABASE_URL": database_url}
    with gateway_process(env) as gateway:
        fake.forget_requests()
        statuses = [
            httpx.post(gateway.url + path, content=body, headers=headers, timeout=10).status_code
            for path, body in [("/api/generate", bodies[0]), ("/api/chat", bodies[1])] * 2
        ]
    # Ollama's own answer for the first three (its decoder refuses a list where it wants a string),
    # then the key's rpm limit: the body never escapes the limiter.
    assert statuses == [400, 400, 400, 429]
    assert [request.path for request in fake.requests] == ["/api/generate", "/api/chat", "/api/generate"]


def test_a_lone_surrogate_is_relayed_as_the_escape_it_came_in(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama
) -> None:
    gateway = make_gateway()
    # A /v1 stream asks the gateway to add include_usage, so it re-encodes the body.
    body = b'{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"a\\ud800b"}]}'
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        content=body,
        headers={**gateway.auth, "Content-Type": "application/json"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert response.read().rstrip().endswith(b"data: [DONE]")
    forwarded = fake.wait_for_request()
    assert forwarded.body is not None
    assert b'"a\\ud800b"' in forwarded.body
    assert forwarded.json["stream_options"] == {"include_usage": True}
