"""Shutting down with requests still open: when GATEWAY_SHUTDOWN_GRACE runs out, or a second
Ctrl-C forces the exit, every forwarded request ends in its own dialect, Ollama's request is
closed, and the tokens streamed so far reach the usage table."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import ALL_SCOPES, issue_key
from tests.fake_ollama import Behaviour, FakeOllama, RecordedRequest, StepGate
from tests.rawhttp import RawResponse, read_response
from tests.servers import GatewayProcess, gateway_process, raw_post, read_until
from tests.usage.test_accounting import today, usage_rows

pytestmark = pytest.mark.timeout(40)

LLAMA = "llama3.2:latest"
MESSAGES = [{"role": "user", "content": "hi"}]
NATIVE_ERROR = b'{"error":"gateway shutting down"}'
OPENAI_ERROR = (
    b'{"error":{"message":"gateway shutting down","type":"api_error","param":null,"code":"gateway_shutdown"}}'
)
# Frames the fake has written (its first one, then one per release) when the signal comes.
STREAMED = 3


@dataclass
class Open:
    """One request in flight: the client's socket, what it read so far, Ollama's record of it."""

    name: str
    sock: socket.socket
    received: bytes
    upstream: RecordedRequest | None  # None: it never reached Ollama

    def rest(self) -> RawResponse:
        return read_response(self.sock, self.received)


def _post(gateway: GatewayProcess, key: str, path: str, body: dict[str, object]) -> socket.socket:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Connection": "close"}
    return raw_post(gateway.url, path, json.dumps(body).encode(), headers)


def _queued(gateway: GatewayProcess, admin: str) -> float:
    response = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=5)
    assert response.status_code == 200
    (line,) = [line for line in response.text.splitlines() if line.startswith("gateway_queue_depth{")]
    return float(line.rpartition(" ")[2])


@contextmanager
def _open_requests(fake: FakeOllama, gateway: GatewayProcess, database_url: str) -> Iterator[dict[str, Open]]:
    """An NDJSON stream and an SSE stream three frames in, a request Ollama has not answered, and
    one waiting in the gateway's queue for a slot (the gateway allows three at a time)."""
    fake.forget_requests()
    opened: dict[str, Open] = {}
    with ExitStack() as closing:
        streams: dict[str, tuple[str, dict[str, object], bytes]] = {
            "ndjson": ("/api/chat", {"model": "llama3.2", "messages": MESSAGES}, b'"done":false'),
            "sse": ("/v1/chat/completions", {"model": "llama3.2", "messages": MESSAGES, "stream": True}, b"data: "),
        }
        for name, (path, body, frame) in streams.items():
            # Its own gate, held long enough that only the gateway can end the stream.
            gate = StepGate(timeout=30)
            fake.behaviour = Behaviour(tokens=50, gate=gate)
            sock = closing.enter_context(_post(gateway, issue_key(database_url, name), path, body))
            upstream = fake.wait_for_request(len(opened) + 1)
            gate.release(STREAMED - 1)
            opened[name] = Open(name, sock, read_until(sock, frame, STREAMED), upstream)
        # Ollama still loading the model: not even a status line.
        fake.behaviour = Behaviour(hang=True)
        body = {"model": "llama3.2", "messages": MESSAGES, "stream": False}
        sock = closing.enter_context(_post(gateway, issue_key(database_url, "waiting"), "/api/chat", body))
        opened["waiting"] = Open("waiting", sock, b"", fake.wait_for_request(3))
        queued = closing.enter_context(_post(gateway, issue_key(database_url, "queued"), "/v1/chat/completions", body))
        opened["queued"] = Open("queued", queued, b"", None)
        admin = issue_key(database_url, "admin", scopes=ALL_SCOPES)
        deadline = time.monotonic() + 5
        # Nothing announces a request joining the queue but the gauge.
        while _queued(gateway, admin) != 1:
            assert time.monotonic() < deadline, "the fourth request never queued"
            time.sleep(0.02)
        yield opened


def _frames(response: RawResponse, separator: bytes) -> list[bytes]:
    frames = response.body.split(separator)
    assert frames[-1] == b""
    return frames[:-1]


def _assert_ended_in_dialect(opened: dict[str, Open]) -> None:
    ndjson = opened["ndjson"].rest()
    assert (ndjson.status, ndjson.terminated) == (200, True)
    lines = _frames(ndjson, b"\n")
    assert [json.loads(line)["done"] for line in lines[:-1]] == [False] * STREAMED
    assert lines[-1] == NATIVE_ERROR

    sse = opened["sse"].rest()
    assert (sse.status, sse.terminated) == (200, True)
    events = _frames(sse, b"\n\n")
    assert len(events) == STREAMED + 1
    assert events[-1] == b"data: " + OPENAI_ERROR

    for name, body in (("waiting", NATIVE_ERROR), ("queued", OPENAI_ERROR)):
        refused = opened[name].rest()
        assert (refused.status, refused.terminated, refused.body) == (503, True, body)

    for request in opened.values():
        if request.upstream is not None:
            # Ollama's request was closed, so it stops generating.
            assert request.upstream.client_disconnected.wait(5), request.name
            assert not request.upstream.completed.is_set()


def _assert_recorded(gateway: GatewayProcess, database_url: str) -> None:
    logged = [json.loads(line) for line in gateway.stdout.lines if line.startswith("{")]
    ended = {
        line["key_name"]: (line["path"], line["status"], line["outcome"], line["completion_tokens"])
        for line in logged
        if line["path"] != "/metrics"
    }
    assert ended == {
        "ndjson": ("/api/chat", 200, "shutdown", STREAMED),
        "sse": ("/v1/chat/completions", 200, "shutdown", STREAMED),
        "waiting": ("/api/chat", 503, "shutdown", 0),
        "queued": ("/v1/chat/completions", 503, "shutdown", 0),
    }
    # Counted from the frames relayed (an estimate: the final counts never came), and errors.
    assert usage_rows(database_url) == [
        (today(), "ndjson", LLAMA, 1, 0, STREAMED, 1),
        (today(), "queued", LLAMA, 1, 0, 0, 1),
        (today(), "sse", LLAMA, 1, 0, STREAMED, 1),
        (today(), "waiting", LLAMA, 1, 0, 0, 1),
    ]


def _env(fake: FakeOllama, database_url: str, grace: float) -> dict[str, str]:
    return {
        "GATEWAY_UPSTREAM_URL": fake.url,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_SHUTDOWN_GRACE": str(grace),
        "GATEWAY_UPSTREAM_CONCURRENCY": "3",
        # Only the shutdown can write usage within the test.
        "GATEWAY_USAGE_FLUSH_INTERVAL": "60",
    }


def test_the_grace_period_running_out_ends_every_request_in_its_dialect(fake: FakeOllama, database_url: str) -> None:
    grace = 1.0
    with (
        gateway_process(_env(fake, database_url, grace)) as gateway,
        _open_requests(fake, gateway, database_url) as opened,
    ):
        gateway.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _assert_ended_in_dialect(opened)
        # Ended by the gateway once the grace period was over, not by uvicorn's cancellation.
        assert time.monotonic() - signalled >= grace
        # uvicorn re-raises the signal after a clean shutdown.
        assert gateway.process.wait(timeout=15) == -signal.SIGTERM
        gateway.stderr.join(timeout=5)
    log = "".join(gateway.stderr.lines)
    assert "timeout graceful shutdown exceeded" not in log
    assert "Traceback" not in log
    assert "Application shutdown complete." in log
    _assert_recorded(gateway, database_url)


def test_a_forced_exit_still_ends_every_request_and_writes_its_usage(fake: FakeOllama, database_url: str) -> None:
    # Far longer than the test: only the second signal ends the requests.
    with (
        gateway_process(_env(fake, database_url, 60)) as gateway,
        _open_requests(fake, gateway, database_url) as opened,
    ):
        gateway.process.send_signal(signal.SIGTERM)
        gateway.stderr.wait_for("Waiting for connections to close")
        # A second Ctrl-C: uvicorn's force exit, which skips the application's shutdown.
        gateway.process.send_signal(signal.SIGINT)
        _assert_ended_in_dialect(opened)
        # uvicorn re-raises the signals it caught, the last first: the SIGTERM ends the process.
        assert gateway.process.wait(timeout=15) == -signal.SIGTERM
        gateway.stderr.join(timeout=5)
    log = "".join(gateway.stderr.lines)
    assert "Traceback" not in log
    assert "Application shutdown complete." not in log
    _assert_recorded(gateway, database_url)
