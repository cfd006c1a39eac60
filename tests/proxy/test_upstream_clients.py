"""Both upstream clients behind the seam keep the same promises: streaming, cancellation, errors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.servers import RunningGateway, free_port, raw_post

pytestmark = [pytest.mark.timeout(20), pytest.mark.parametrize("client", ["httptools", "httpx"])]

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


def test_lockstep_stream(make_gateway: Callable[..., RunningGateway], fake: FakeOllama, client: str) -> None:
    gateway = make_gateway(upstream_client=client)
    gate = StepGate()
    fake.behaviour = Behaviour(tokens=4, gate=gate)
    lines = []
    with httpx.stream("POST", gateway.url + "/api/chat", json=CHAT, headers=gateway.auth, timeout=10) as response:
        for line in response.iter_lines():
            lines.append(json.loads(line))
            gate.release()
    assert [line["done"] for line in lines] == [False] * 4 + [True]


def test_disconnect_before_first_byte(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, client: str
) -> None:
    gateway = make_gateway(upstream_client=client)
    fake.behaviour = Behaviour(hang=True)
    with raw_post(gateway.url, "/api/chat", json.dumps(CHAT).encode(), gateway.auth):
        recorded = fake.wait_for_request()
    assert recorded.client_disconnected.wait(1.0)


def test_cut_mid_stream_and_timeouts(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, client: str
) -> None:
    gateway = make_gateway(upstream_client=client, read_timeout=0.3)
    fake.behaviour = Behaviour(tokens=10, cut_after=2)
    cut = httpx.post(gateway.url + "/api/chat", json=CHAT, headers=gateway.auth, timeout=10)
    assert json.loads(cut.text.splitlines()[-1]) == {"error": "upstream connection lost"}
    fake.behaviour = Behaviour(hang=True)
    slow = httpx.post(gateway.url + "/api/chat", json=CHAT, headers=gateway.auth, timeout=10)
    assert (slow.status_code, slow.json()) == (504, {"error": "upstream timed out"})
    down = make_gateway(upstream_client=client, upstream_url=f"http://127.0.0.1:{free_port()}")
    refused = httpx.post(down.url + "/v1/chat/completions", json=CHAT, headers=down.auth, timeout=10)
    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "upstream_unavailable"


def test_blob_streams_both_ways_of_framing(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, client: str
) -> None:
    gateway = make_gateway(upstream_client=client, max_body_bytes=4096)
    data = b"weights" * 100_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    sized = httpx.post(f"{gateway.url}/api/blobs/{digest}", content=data, headers=gateway.auth, timeout=10)
    assert sized.status_code == 201
    fake.reset()
    chunked = httpx.post(f"{gateway.url}/api/blobs/{digest}", content=chunks(), headers=gateway.auth, timeout=10)
    assert chunked.status_code == 201
    assert fake.requests[-1].body_sha256 == hashlib.sha256(data).hexdigest()
    # A body over the limit on a route whose body nobody reads is streamed upstream as it comes,
    # then refused the moment it passes the limit; the half-sent request is abandoned.
    fake.reset()
    big = httpx.post(gateway.url + "/api/some-new-route", content=chunks(), headers=gateway.auth, timeout=10)
    assert (big.status_code, big.json()) == (413, {"error": "request body is larger than 4096 bytes"})
    assert all(not recorded.completed.is_set() for recorded in fake.requests)
