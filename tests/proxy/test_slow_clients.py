"""A client that reads slower than its stream comes still gets every piece, once and in order.

Pieces normally go from the upstream connection's read straight to the client's connection; while
the client's buffer is full they queue and go through the handling task, and once it drains they
go straight again. Crossing between the two must never let a later piece overtake an earlier one.
The client here reads nothing until the gateway has had to stop writing to it (uvicorn's flow
control paused), then everything.
"""

from __future__ import annotations

import json
import socket
import threading
from urllib.parse import urlsplit

import pytest
from uvicorn.protocols.http.flow_control import FlowControl

from tests.fake_ollama import Behaviour, FakeOllama
from tests.rawhttp import read_response
from tests.servers import RunningGateway

pytestmark = pytest.mark.timeout(30)

# 2,000 lines of ~4 KiB: more than loopback's socket buffers and the gateway's own hold together.
PIECES = tuple(f"{index:05d}:" + "x" * 4000 for index in range(2000))


@pytest.fixture
def client_paused(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once the gateway has had to stop writing to a client (its buffer full)."""
    paused = threading.Event()
    pause = FlowControl.pause_writing

    def noted(self: FlowControl) -> None:
        pause(self)
        paused.set()

    monkeypatch.setattr(FlowControl, "pause_writing", noted)
    return paused


def _slow_read(gateway: RunningGateway, path: str, body: dict[str, object], paused: threading.Event) -> list[bytes]:
    parts = urlsplit(gateway.url)
    sock = socket.socket()
    # A small receive window, so the gateway's side fills up quickly.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.settimeout(20)
    with sock:
        sock.connect((parts.hostname, parts.port))
        data = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gateway.key}\r\n"
        sock.sendall(f"{head}Connection: close\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        assert paused.wait(20), "the gateway never had to wait for this client"
        response = read_response(sock, limit=64 << 20)
    assert response.status == 200
    assert response.terminated
    return response.body.split(b"\n")


def test_ndjson_reaches_a_slow_client_whole_and_in_order(
    gateway: RunningGateway, fake: FakeOllama, client_paused: threading.Event
) -> None:
    fake.behaviour = Behaviour(pieces=PIECES)
    body: dict[str, object] = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    lines = _slow_read(gateway, "/api/chat", body, client_paused)
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]
    assert [record["message"]["content"] for record in records[:-1]] == list(PIECES)
    assert records[-1]["done"] is True
    assert records[-1]["eval_count"] == len(PIECES)


def test_sse_reaches_a_slow_client_whole_and_in_order(
    gateway: RunningGateway, fake: FakeOllama, client_paused: threading.Event
) -> None:
    # Without include_usage: the gateway asks for it and strips it again on the way (a transform).
    fake.behaviour = Behaviour(pieces=PIECES)
    body: dict[str, object] = {"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    lines = _slow_read(gateway, "/v1/chat/completions", body, client_paused)
    events = [line.removeprefix(b"data: ") for line in lines if line]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert [chunk["choices"][0]["delta"]["content"] for chunk in chunks[:-1]] == list(PIECES)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in chunk for chunk in chunks)
