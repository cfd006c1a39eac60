"""Streams are relayed chunk by chunk, untouched, and marked so front proxies do not buffer them."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.servers import RunningGateway

pytestmark = pytest.mark.timeout(20)


def _lockstep(gateway: RunningGateway, fake: FakeOllama, path: str, body: dict[str, object], parse) -> list[object]:
    """Each chunk must reach the client before the fake is allowed to write the next one."""
    gate = StepGate()
    fake.behaviour = Behaviour(tokens=5, gate=gate)
    seen: list[object] = []
    with (
        httpx.Client(base_url=gateway.url, headers=gateway.auth, timeout=10) as client,
        client.stream("POST", path, json=body) as response,
    ):
        assert response.status_code == 200
        gate.release()
        for line in response.iter_lines():
            if not line:
                continue
            seen.append(parse(line))
            # If the gateway buffered, this line could not have arrived before the release.
            gate.release()
    return seen


def test_ndjson_is_relayed_chunk_by_chunk(gateway: RunningGateway, fake: FakeOllama) -> None:
    chunks = _lockstep(
        gateway, fake, "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}, json.loads
    )
    assert len(chunks) == 6
    assert [chunk["done"] for chunk in chunks] == [False] * 5 + [True]  # type: ignore[index]


def test_sse_is_relayed_event_by_event(gateway: RunningGateway, fake: FakeOllama) -> None:
    events = _lockstep(
        gateway,
        fake,
        "/v1/chat/completions",
        {"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        lambda line: line,
    )
    assert events[-1] == "data: [DONE]"
    assert all(isinstance(event, str) and event.startswith("data: ") for event in events)
    # 5 content chunks (the first also carries the role) + the finish chunk + [DONE]
    assert len(events) == 7


def test_stream_bytes_and_headers_match_the_upstream(gateway: RunningGateway, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=4)
    body = {"model": "llama3.2", "prompt": "hi"}
    with httpx.Client(timeout=10) as client:
        direct = client.post(fake.url + "/api/generate", json=body)
        relayed = client.post(gateway.url + "/api/generate", json=body, headers=gateway.auth)
    assert relayed.status_code == direct.status_code == 200
    assert relayed.headers["content-type"] == direct.headers["content-type"] == "application/x-ndjson"
    assert relayed.headers["x-accel-buffering"] == "no"
    assert relayed.headers["cache-control"] == "no-cache"
    assert "content-encoding" not in relayed.headers
    direct_lines = [json.loads(line) for line in direct.text.splitlines()]
    relayed_lines = [json.loads(line) for line in relayed.text.splitlines()]
    assert [line["response"] for line in relayed_lines] == [line["response"] for line in direct_lines]
    assert relayed.content.endswith(b"\n")
    assert b"\n\n" not in relayed.content


def test_streaming_request_answered_with_one_object_is_not_marked_a_stream(
    gateway: RunningGateway, fake: FakeOllama
) -> None:
    # An empty prompt loads the model: one JSON object even though stream defaults to true.
    response = httpx.post(gateway.url + "/api/generate", json={"model": "llama3.2"}, headers=gateway.auth, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert "x-accel-buffering" not in response.headers
    assert response.json()["done_reason"] == "load"
    assert not response.content.endswith(b"\n")


def test_sse_framing_is_untouched(gateway: RunningGateway, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=2)
    body = {
        "model": "llama3.2",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "x"}],
    }
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth, timeout=10)
    assert response.headers["content-type"] == "text/event-stream"
    frames = response.content.split(b"\n\n")
    assert frames[-1] == b""
    assert frames[-2] == b"data: [DONE]"
    usage = json.loads(frames[-3][len(b"data: ") :])
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 2
