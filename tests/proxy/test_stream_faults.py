"""What reaches a client on the wire when a stream is relayed, and when its upstream breaks.

Read off plain sockets: the stream headers as sent, and whether the chunked body was terminated.
The fake writes header names as Go does (``Content-Type``), and cuts its connection with an
orderly close (FIN) or a reset (RST), after exactly three chunks reached the client.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionUserMessageParam

from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.rawhttp import RawResponse, read_response
from tests.servers import RunningGateway, raw_post, read_until

pytestmark = pytest.mark.timeout(20)

CLIENTS = ["httptools", "httpx"]
MESSAGES = [{"role": "user", "content": "hi"}]
SURFACES: dict[str, tuple[dict[str, object], str]] = {
    "/api/generate": ({"model": "llama3.2", "prompt": "hi"}, "application/x-ndjson"),
    "/api/chat": ({"model": "llama3.2", "messages": MESSAGES}, "application/x-ndjson"),
    "/v1/chat/completions": ({"model": "llama3.2", "messages": MESSAGES, "stream": True}, "text/event-stream"),
}
LOST_NDJSON = {"error": "upstream connection lost"}


def _send(gateway: RunningGateway, path: str, body: dict[str, object]):
    headers = {**gateway.auth, "Connection": "close"}
    return raw_post(gateway.url, path, json.dumps(body).encode(), headers)


def _cut_after_three(gateway: RunningGateway, fake: FakeOllama, path: str, reset: bool) -> RawResponse:
    """Three chunks reach the client, then the upstream connection is cut (FIN or RST)."""
    gate = StepGate()
    fake.behaviour = Behaviour(tokens=10, gate=gate, cut_after=3, cut_reset=reset)
    body, content_type = SURFACES[path]
    marker = b"data: " if content_type == "text/event-stream" else b'"done":false'
    with _send(gateway, path, body) as sock:
        gate.release(2)
        # All three are at the client, so the gateway has read them before the cut is made.
        received = read_until(sock, marker, 3)
        gate.release()  # the fourth chunk's turn: the fake cuts instead
        return read_response(sock, received)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("path", list(SURFACES))
def test_every_stream_header_reaches_the_client(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, path: str, client: str
) -> None:
    gateway = make_gateway(upstream_client=client)
    body, content_type = SURFACES[path]
    with _send(gateway, path, body) as sock:
        response = read_response(sock)
    assert response.status == 200
    assert response.header("content-type") == content_type
    assert response.header("x-accel-buffering") == "no"
    assert response.header("cache-control") == "no-cache"
    assert response.header("transfer-encoding") == "chunked"
    assert response.terminated
    # Counted as a stream: the usage came from its final chunk.
    assert fake.requests[-1].completed.wait(5)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_a_cut_ndjson_stream_ends_with_one_error_line_and_a_terminated_body(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, path: str, reset: bool, client: str
) -> None:
    gateway = make_gateway(upstream_client=client)
    response = _cut_after_three(gateway, fake, path, reset)
    assert response.status == 200
    assert response.terminated, "the chunked body must end with its terminating chunk"
    assert response.body.endswith(b"\n")
    lines = [json.loads(line) for line in response.body.splitlines()]
    assert [line.get("done") for line in lines[:3]] == [False, False, False]
    assert lines[3:] == [LOST_NDJSON]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_a_cut_sse_stream_ends_with_one_error_event_and_a_terminated_body(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, reset: bool, client: str
) -> None:
    gateway = make_gateway(upstream_client=client)
    response = _cut_after_three(gateway, fake, "/v1/chat/completions", reset)
    assert response.status == 200
    assert response.terminated
    frames = response.body.split(b"\n\n")
    assert frames[-1] == b""
    events = [json.loads(frame.removeprefix(b"data: ")) for frame in frames[:-1]]
    assert [event["object"] for event in events[:3]] == ["chat.completion.chunk"] * 3
    assert len(events) == 4
    assert events[3]["error"]["code"] == "upstream_connection_lost"
    assert events[3]["error"]["message"] == "upstream connection lost"


def _read_releasing_after_three(pieces: Iterable[str | None], gate: StepGate, seen: list[str | None]) -> None:
    for piece in pieces:
        seen.append(piece)
        if len(seen) == 3:
            gate.release()


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_the_official_clients_raise_on_a_cut_stream(gateway: RunningGateway, fake: FakeOllama, reset: bool) -> None:
    gate = StepGate(2)
    fake.behaviour = Behaviour(tokens=10, gate=gate, cut_after=3, cut_reset=reset)
    parts: list[str | None] = []
    with ollama.Client(host=gateway.url, headers=gateway.auth) as native:
        stream = native.chat(model="llama3.2", messages=MESSAGES, stream=True)
        with pytest.raises(ollama.ResponseError) as caught:
            _read_releasing_after_three((part.message.content for part in stream), gate, parts)
    assert caught.value.error == "upstream connection lost"
    assert parts == ["tok0 ", "tok1 ", "tok2 "]

    gate = StepGate(2)
    fake.behaviour = Behaviour(tokens=10, gate=gate, cut_after=3, cut_reset=reset)
    deltas: list[str | None] = []
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as compat:
        user: ChatCompletionUserMessageParam = {"role": "user", "content": "hi"}
        chunks = compat.chat.completions.create(model="llama3.2", messages=[user], stream=True)
        with pytest.raises(openai.APIError) as raised:
            _read_releasing_after_three((chunk.choices[0].delta.content for chunk in chunks), gate, deltas)
    assert "upstream connection lost" in str(raised.value)
    assert deltas == ["tok0 ", "tok1 ", "tok2 "]
