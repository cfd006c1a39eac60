"""The access log: one JSON line on stdout per request, for every outcome, with exact fields.

A real gateway process is used so the lines are read from its actual stdout.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.keys.management import KeyAdmin, KeyChange
from gateway.keys.store import Scope, open_keystore
from gateway.observe.accesslog import AccessLog, AuditLog
from tests.conftest import ALL_SCOPES, issue_key
from tests.fake_ollama import RUNNER_FAILED, Behaviour, FakeOllama, StepGate
from tests.ollama_signer import OllamaSigner, fingerprint_of, make_key
from tests.records import make_record
from tests.servers import GatewayProcess, gateway_process, raw_post, read_until

pytestmark = pytest.mark.timeout(30)

FIELDS = {
    "time",
    "request_id",
    "key_id",
    "key_name",
    "auth",
    "public_key",
    "client",
    "method",
    "path",
    "route",
    "route_class",
    "model",
    "status",
    "upstream_status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "ttfb_ms",
    "overhead_ms",
    "queue_wait_ms",
    "streamed",
    "prompt_tokens",
    "completion_tokens",
    "tokens_exact",
    "outcome",
    "upstream",
    "failed_over_from",
}
LINE_TIMEOUT = 5.0
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Logged:
    process: GatewayProcess
    client: httpx.Client
    keys: dict[str, str]  # name -> secret
    ids: dict[str, str]  # name -> key id
    upstream: str  # the one server's name: its host:port
    signer: OllamaSigner  # signs as the ollama command does, with a public key attached to "dana"

    @property
    def url(self) -> str:
        return self.process.url

    def bearer(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def line(self, request_id: str) -> dict[str, object]:
        """The one log line of ``request_id``, once the request is over (polled: no event exists)."""
        deadline = time.monotonic() + LINE_TIMEOUT
        while not (found := self._lines(request_id)):
            assert time.monotonic() < deadline, f"no log line for {request_id}"
            time.sleep(0.01)
        # A later request's line proves nothing more is coming for this one.
        sentinel = new_id()
        self.client.get("/api/version", headers={**self.bearer("alice"), "X-Request-Id": sentinel})
        while not self._lines(sentinel):
            assert time.monotonic() < deadline, "no log line for the sentinel request"
            time.sleep(0.01)
        found = self._lines(request_id)
        assert len(found) == 1, found
        return found[0]

    def _lines(self, request_id: str) -> list[dict[str, object]]:
        # Every stdout line is one JSON record; json.loads fails the test on anything else.
        records = [json.loads(line) for line in list(self.process.stdout.lines)]
        return [record for record in records if record["request_id"] == request_id]


def new_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def logged(_fake_server: FakeOllama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    database_url = f"sqlite:///{tmp_path_factory.mktemp('accesslog') / 'gateway.db'}"
    keys = {
        "alice": issue_key(database_url, "alice", scopes=ALL_SCOPES),
        "reader": issue_key(database_url, "reader", scopes=frozenset({Scope.READ})),
        "carol": issue_key(database_url, "carol"),
        "old": issue_key(database_url, "old", expires_at=time.time() - 60),
        "gone": issue_key(database_url, "gone"),
    }
    signer = OllamaSigner(make_key(tmp_path_factory.mktemp("ollama"), "dana@laptop"))
    keys["dana"] = issue_key(database_url, "dana")
    store = open_keystore(database_url)
    try:
        admin = KeyAdmin(store)
        admin.revoke(store.get("gone").id)
        admin.update(store.get("dana").id, KeyChange(add_ollama_keys=(signer.line,)))
    finally:
        store.close()
    env = {
        "GATEWAY_UPSTREAM_URL": _fake_server.url,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_READ_TIMEOUT": "1",
        "GATEWAY_MAX_BODY_BYTES": "65536",
        "GATEWAY_AUTH_FAILURE_LIMIT": "2",
        # Each test speaks for its own client address, so lockouts stay apart.
        "GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
        "GATEWAY_LOG_PROMPTS": "carol",
    }
    with gateway_process(env) as process, httpx.Client(base_url=process.url, timeout=10) as client:
        ids = {name: secret.split("_")[1] for name, secret in keys.items()}
        yield Logged(process, client, keys, ids, f"127.0.0.1:{_fake_server.port}", signer)


def stable(line: dict[str, object], started: float) -> dict[str, object]:
    """Check the timing fields' shape and bounds, and return the fields that are exact."""
    assert set(line) == FIELDS
    moment = dt.datetime.fromisoformat(str(line["time"]).replace("Z", "+00:00")).timestamp()
    assert started - 0.01 <= moment <= time.time()
    duration, ttfb, overhead = line["duration_ms"], line["ttfb_ms"], line["overhead_ms"]
    assert isinstance(duration, float)
    assert isinstance(overhead, float)
    assert 0 <= overhead <= duration < 10_000
    if ttfb is not None:
        assert isinstance(ttfb, float)
        assert overhead <= ttfb <= duration
    assert isinstance(line["queue_wait_ms"], float)
    assert 0 <= line["queue_wait_ms"] <= duration
    timings = ("time", "duration_ms", "ttfb_ms", "overhead_ms", "queue_wait_ms")
    return {name: value for name, value in line.items() if name not in timings}


def expected(logged: Logged, rid: str, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "request_id": rid,
        "key_id": logged.ids["alice"],
        "key_name": "alice",
        "auth": None,
        "public_key": None,
        "client": "127.0.0.1",
        "method": "POST",
        "path": "/api/chat",
        "route": "/api/chat",
        "route_class": "inference",
        "model": "llama3.2:latest",  # the canonical name, however the client spelled it
        "status": 200,
        "upstream_status": 200,
        "bytes_in": 0,
        "bytes_out": 0,
        "streamed": True,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "tokens_exact": True,
        "outcome": "ok",
        "upstream": logged.upstream,
        "failed_over_from": None,
    }
    assert set(fields) <= set(base)
    return base | fields


def test_ok_streamed(logged: Logged, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=3, prompt_eval_count=7)
    rid, started = new_id(), time.time()
    body = json.dumps(CHAT).encode()
    response = logged.client.post(
        "/api/chat", content=body, headers={**logged.bearer("alice"), "X-Request-Id": rid}, timeout=10
    )
    assert response.status_code == 200
    line = logged.line(rid)
    assert stable(line, started) == expected(
        logged, rid, bytes_in=len(body), bytes_out=len(response.content), prompt_tokens=7, completion_tokens=3
    )
    # The overhead header and the log agree: both are the time spent before forwarding.
    assert float(response.headers["x-gateway-overhead-ms"]) == line["overhead_ms"]


def test_ok_not_streamed_openai(logged: Logged, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=4, prompt_eval_count=9)
    rid, started = new_id(), time.time()
    body = json.dumps(CHAT).encode()
    response = logged.client.post(
        "/v1/chat/completions",
        content=body,
        headers={**logged.bearer("alice"), "X-Request-Id": rid, "X-Forwarded-For": "198.51.100.4"},
        timeout=10,
    )
    assert response.status_code == 200
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        path="/v1/chat/completions",
        route="/v1/chat/completions",
        client="198.51.100.4",
        bytes_in=len(body),
        bytes_out=len(response.content),
        streamed=False,
        prompt_tokens=9,
        completion_tokens=4,
    )


def test_read_route_has_no_model_and_no_tokens(logged: Logged, fake: FakeOllama) -> None:
    rid, started = new_id(), time.time()
    response = logged.client.get("/api/tags", headers={**logged.bearer("reader"), "X-Request-Id": rid})
    assert response.status_code == 200
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        key_id=logged.ids["reader"],
        key_name="reader",
        method="GET",
        path="/api/tags",
        route="/api/tags",
        route_class="read",
        model=None,
        bytes_out=len(response.content),
        streamed=False,
    )


def _open_stream(logged: Logged, rid: str, body: bytes) -> socket.socket:
    headers = {"Content-Type": "application/json", **logged.bearer("alice"), "X-Request-Id": rid}
    return raw_post(logged.url, "/api/chat", body, headers)


def test_client_disconnect_mid_stream(logged: Logged, fake: FakeOllama) -> None:
    gate = StepGate()
    fake.behaviour = Behaviour(tokens=50, gate=gate)
    rid, started = new_id(), time.time()
    body = json.dumps(CHAT).encode()
    with _open_stream(logged, rid, body) as sock:
        gate.release(1)
        gate.wait_sent(2)
        received = read_until(sock, b'"done":false', 2)
    line = logged.line(rid)
    assert isinstance(line["bytes_out"], int)
    assert stable(line, started) == expected(
        logged,
        rid,
        bytes_in=len(body),
        bytes_out=line["bytes_out"],
        completion_tokens=2,
        tokens_exact=False,
        outcome="client_disconnect",
    )
    # What the client was sent: the two chunks (chunked framing aside).
    _, _, chunked = received.partition(b"\r\n\r\n")
    assert line["bytes_out"] == sum(len(piece) for piece in chunked.split(b"\r\n")[1::2])


def test_upstream_cut_mid_stream(logged: Logged, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=5, cut_after=2)
    rid, started = new_id(), time.time()
    body = json.dumps(CHAT).encode()
    response = logged.client.post(
        "/api/chat", content=body, headers={**logged.bearer("alice"), "X-Request-Id": rid}, timeout=10
    )
    lines = response.text.splitlines()
    assert lines[-1] == '{"error":"upstream connection lost"}'
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        bytes_in=len(body),
        bytes_out=len(response.content),
        completion_tokens=2,
        tokens_exact=False,
        outcome="upstream_error",
    )


def test_ollama_error_line_mid_stream(logged: Logged, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=5, fail_after=2)
    rid, started = new_id(), time.time()
    body = json.dumps(CHAT).encode()
    response = logged.client.post(
        "/api/chat", content=body, headers={**logged.bearer("alice"), "X-Request-Id": rid}, timeout=10
    )
    assert response.text.splitlines()[-1] == json.dumps({"error": RUNNER_FAILED}, separators=(",", ":"))
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        bytes_in=len(body),
        bytes_out=len(response.content),
        completion_tokens=2,
        tokens_exact=False,
        outcome="upstream_error",
    )


def test_upstream_error_status(logged: Logged, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(status=500)
    rid, started = new_id(), time.time()
    body = json.dumps(CHAT).encode()
    response = logged.client.post(
        "/api/chat", content=body, headers={**logged.bearer("alice"), "X-Request-Id": rid}, timeout=10
    )
    assert response.status_code == 500
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        status=500,
        upstream_status=500,
        bytes_in=len(body),
        bytes_out=len(response.content),
        streamed=False,
        outcome="upstream_error",
    )


def test_upstream_timeout(logged: Logged, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(hang=True)
    rid, started = new_id(), time.time()
    body = json.dumps(CHAT).encode()
    response = logged.client.post(
        "/api/chat", content=body, headers={**logged.bearer("alice"), "X-Request-Id": rid}, timeout=10
    )
    assert response.status_code == 504
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        status=504,
        upstream_status=None,
        bytes_in=len(body),
        bytes_out=len(response.content),
        streamed=False,
        outcome="upstream_timeout",
    )


def test_upstream_refusal_is_relayed_not_an_upstream_failure(logged: Logged, fake: FakeOllama) -> None:
    rid, started = new_id(), time.time()
    body = json.dumps({**CHAT, "model": "nope"}).encode()
    response = logged.client.post("/api/chat", content=body, headers={**logged.bearer("alice"), "X-Request-Id": rid})
    assert response.status_code == 404
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        model="nope:latest",
        status=404,
        upstream_status=404,
        bytes_in=len(body),
        bytes_out=len(response.content),
        streamed=False,
    )


def _refused(logged: Logged, rid: str, headers: dict[str, str], body: bytes, path: str = "/api/chat") -> httpx.Response:
    return logged.client.post(path, content=body, headers={**headers, "X-Request-Id": rid}, timeout=10)


def test_unauthorized(logged: Logged, fake: FakeOllama) -> None:
    rid, started = new_id(), time.time()
    response = _refused(logged, rid, {"X-Forwarded-For": "203.0.113.10"}, json.dumps(CHAT).encode())
    assert response.status_code == 401
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        key_id=None,
        key_name=None,
        client="203.0.113.10",
        model=None,
        status=401,
        upstream_status=None,
        upstream=None,
        bytes_out=len(response.content),
        streamed=False,
        outcome="unauthorized",
        auth="missing",
    )
    assert "/api/chat" not in [request.path for request in fake.requests]


def test_forbidden(logged: Logged, fake: FakeOllama) -> None:
    rid, started = new_id(), time.time()
    response = _refused(logged, rid, logged.bearer("reader"), json.dumps(CHAT).encode())
    assert response.status_code == 403
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        key_id=logged.ids["reader"],
        key_name="reader",
        model=None,
        status=403,
        upstream_status=None,
        upstream=None,
        bytes_out=len(response.content),
        streamed=False,
        outcome="forbidden",
    )


def test_bad_request(logged: Logged, fake: FakeOllama) -> None:
    rid, started = new_id(), time.time()
    body = b'{"model": "llama3.2", "messages": ['
    response = _refused(logged, rid, logged.bearer("alice"), body)
    assert response.status_code == 400
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        model=None,
        status=400,
        upstream_status=None,
        upstream=None,
        bytes_in=len(body),
        bytes_out=len(response.content),
        streamed=False,
        outcome="bad_request",
    )


def test_body_too_large(logged: Logged, fake: FakeOllama) -> None:
    rid, started = new_id(), time.time()
    response = _refused(logged, rid, logged.bearer("alice"), b"x" * 65537)
    assert response.status_code == 413
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        key_id=None,
        key_name=None,
        model=None,
        status=413,
        upstream_status=None,
        upstream=None,
        bytes_out=len(response.content),
        streamed=False,
        outcome="body_too_large",
    )


def test_why_a_key_was_refused_is_logged_and_never_told(logged: Logged, fake: FakeOllama) -> None:
    alice_id = logged.ids["alice"]
    cases = [
        ("missing", {}, None),
        ("malformed", {"Authorization": "Bearer sk-not-a-gateway-key"}, None),
        ("unknown", {"Authorization": "Bearer ogw_zzzzzzzz_" + "A" * 43}, "zzzzzzzz"),
        ("wrong_secret", {"Authorization": f"Bearer ogw_{alice_id}_" + "A" * 43}, alice_id),
        ("expired", logged.bearer("old"), logged.ids["old"]),
        ("revoked", logged.bearer("gone"), logged.ids["gone"]),
    ]
    bodies = set()
    for number, (reason, headers, key_id) in enumerate(cases):
        rid = new_id()
        # Each from its own address: the lockout must not turn any of them into a 429.
        response = _refused(logged, rid, {**headers, "X-Forwarded-For": f"203.0.113.{50 + number}"}, b"{}")
        assert response.status_code == 401
        bodies.add(response.content)
        line = logged.line(rid)
        assert (line["auth"], line["key_id"], line["key_name"], line["outcome"]) == (
            reason,
            key_id,
            None,
            "unauthorized",
        )
    assert bodies == {b'{"error":"invalid or missing API key"}'}


def test_a_signed_request_names_its_key_and_public_key(logged: Logged, fake: FakeOllama) -> None:
    fingerprint = fingerprint_of(logged.signer.public_file)
    rid = new_id()
    target, headers = logged.signer.prepare("GET", "/api/tags")
    assert logged.client.get(target, headers={**headers, "X-Request-Id": rid}).status_code == 200
    line = logged.line(rid)
    assert (line["key_id"], line["key_name"], line["public_key"], line["auth"]) == (
        logged.ids["dana"],
        "dana",
        fingerprint,
        None,
    )
    # What Ollama saw: neither the signature nor its timestamp.
    assert line["path"] == "/api/tags"
    rid = new_id()
    target, headers = logged.signer.prepare("GET", "/api/tags", ts=int(time.time()) - 3600)
    refused = logged.client.get(target, headers={**headers, "X-Request-Id": rid, "X-Forwarded-For": "203.0.113.90"})
    assert refused.status_code == 401
    line = logged.line(rid)
    assert (line["key_id"], line["public_key"], line["auth"]) == (None, fingerprint, "stale_timestamp")


def test_auth_throttled(logged: Logged, fake: FakeOllama) -> None:
    address = {"X-Forwarded-For": "203.0.113.20"}
    wrong = {**address, "Authorization": "Bearer ogw_nope"}
    for _ in range(2):
        assert _refused(logged, new_id(), wrong, b"{}").status_code == 401
    rid, started = new_id(), time.time()
    response = _refused(logged, rid, wrong, b"{}")
    assert response.status_code == 429
    assert stable(logged.line(rid), started) == expected(
        logged,
        rid,
        key_id=None,
        key_name=None,
        client="203.0.113.20",
        model=None,
        status=429,
        upstream_status=None,
        upstream=None,
        bytes_out=len(response.content),
        streamed=False,
        outcome="auth_throttled",
    )


def test_bytes_out_includes_the_appended_error_frame(logged: Logged, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=5, cut_after=2)
    rid = new_id()
    response = logged.client.post(
        "/api/chat", json=CHAT, headers={**logged.bearer("alice"), "X-Request-Id": rid}, timeout=10
    )
    assert logged.line(rid)["bytes_out"] == len(response.content)


def test_json_and_text_formats() -> None:
    lines: list[str] = []
    AccessLog(write=lines.append)(make_record())
    AccessLog(fmt="text", write=lines.append)(make_record())
    AccessLog(fmt="text", write=lines.append)(
        make_record(
            route_class="read",
            key_name=None,
            model=None,
            status=401,
            upstream=None,
            outcome="unauthorized",
            auth="wrong_secret",
        )
    )
    assert json.loads(lines[0]) == {
        "time": "2026-01-01T00:00:00.250Z",
        "request_id": "r1",
        "key_id": "k1",
        "key_name": "alice",
        "auth": None,
        "public_key": None,
        "client": "192.0.2.1",
        "method": "POST",
        "path": "/api/chat",
        "route": "/api/chat",
        "route_class": "inference",
        "model": "llama3.2",
        "status": 200,
        "upstream_status": 200,
        "bytes_in": 10,
        "bytes_out": 20,
        "duration_ms": 1500.0,
        "ttfb_ms": 250.0,
        "overhead_ms": 1.234,
        "queue_wait_ms": 0.0,
        "streamed": True,
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "tokens_exact": True,
        "outcome": "ok",
        "upstream": "gpu-a",
        "failed_over_from": None,
    }
    assert lines[1:] == [
        "2026-01-01T00:00:00.250Z 200 POST /api/chat 1500.0ms client=192.0.2.1 key=alice model=llama3.2 "
        "upstream=gpu-a outcome=ok tokens=7+3 id=r1",
        # A refused key is named by the id it presented, and why it was refused.
        "2026-01-01T00:00:00.250Z 401 POST /api/chat 1500.0ms client=192.0.2.1 key=k1 model=- upstream=- "
        "outcome=unauthorized auth=wrong_secret id=r1",
    ]


def test_prompts_only_for_the_keys_named() -> None:
    lines: list[str] = []
    AccessLog(log_prompts=("bob",), write=lines.append)(make_record())
    AccessLog(log_prompts=("alice",), write=lines.append)(make_record())
    AccessLog(log_prompts=("*",), write=lines.append)(make_record(key_name="carol"))
    AccessLog(log_prompts=("*",), write=lines.append)(make_record(key_name=None, key_id=None))
    logged = [json.loads(line).get("request_body") for line in lines]
    assert logged == [None, '{"prompt":"secret plans"}', '{"prompt":"secret plans"}', None]


def test_a_broken_stdout_does_not_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Broken:
        def write(self, text: str) -> int:
            raise BrokenPipeError

        def flush(self) -> None:
            raise BrokenPipeError

    monkeypatch.setattr("sys.stdout", Broken())
    AccessLog()(make_record())


PROMPT = "zebra-quartz-7431 secret plans"


def _prompted(model: str = "llama3.2") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}]}


def _wait_for_usage(database_url: str, requests: int) -> None:
    """Poll until the ledger's batch reached the database (flushes are periodic)."""
    path = database_url.removeprefix("sqlite:///")
    deadline = time.monotonic() + LINE_TIMEOUT
    while True:
        with sqlite3.connect(path) as connection:
            (total,) = connection.execute("SELECT COALESCE(SUM(requests), 0) FROM usage").fetchone()
        if total >= requests:
            return
        assert time.monotonic() < deadline, f"{total} of {requests} requests accounted"
        time.sleep(0.02)


def test_no_prompt_and_no_secret_anywhere_by_default(fake: FakeOllama, database_url: str) -> None:
    alice = issue_key(database_url, "alice", scopes=ALL_SCOPES)
    reader = issue_key(database_url, "reader", scopes=frozenset({Scope.READ}))
    wrong = alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB")
    secrets = [alice, reader, wrong, *(key.split("_", 2)[2] for key in (alice, reader, wrong))]
    env = {
        "GATEWAY_UPSTREAM_URL": fake.url,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_USAGE_FLUSH_INTERVAL": "0.05",
    }
    bodies: list[bytes] = []
    with gateway_process(env) as process, httpx.Client(base_url=process.url, timeout=10) as client:
        as_alice = {"Authorization": f"Bearer {alice}"}
        for path, headers, body in [
            ("/api/chat", as_alice, _prompted()),
            ("/v1/chat/completions", {"X-API-Key": alice}, _prompted()),
            ("/api/chat", as_alice, _prompted("nope")),
            ("/api/chat", {"Authorization": f"Bearer {wrong}"}, _prompted()),
            ("/v1/chat/completions", {"Authorization": f"Bearer {reader}"}, _prompted()),
            ("/api/chat", as_alice, {**_prompted(), "model": "bad name"}),
        ]:
            bodies.append(client.post(path, json=body, headers=headers).content)
        bodies.append(client.post("/api/chat", content=b'{"prompt":"' + PROMPT.encode(), headers=as_alice).content)
        bodies.append(client.get("/api/tags", auth=("user", alice)).content)
        fake.behaviour = Behaviour(tokens=5, fail_after=2)
        generate = {"model": "llama3.2", "prompt": PROMPT}
        bodies.append(client.post("/api/generate", json=generate, headers=as_alice).content)
        metrics = client.get("/metrics", headers=as_alice)
        assert metrics.status_code == 200
        _wait_for_usage(database_url, 8)  # all but the unknown key
        database = Path(database_url.removeprefix("sqlite:///"))
        files = [database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")]
        stored = [path.read_bytes() for path in files if path.exists()]
        assert len(stored) == 3
        process.stop()
        stored.append(database.read_bytes())
    assert len(process.stdout.lines) == 9  # /metrics is not a forwarded request
    for text in [*process.stdout.lines, *process.stderr.lines, metrics.text, *(body.decode() for body in bodies)]:
        assert PROMPT.split()[0] not in text
        for secret in secrets:
            assert secret not in text
    for raw in stored:
        assert PROMPT.split()[0].encode() not in raw
        for secret in secrets:
            assert secret.encode() not in raw


def test_prompts_are_logged_only_for_the_keys_named(logged: Logged, fake: FakeOllama) -> None:
    rid = new_id()
    headers = {**logged.bearer("carol"), "X-Request-Id": rid}
    assert logged.client.post("/api/chat", json=_prompted(), headers=headers).status_code == 200
    line = logged.line(rid)
    assert json.loads(str(line.pop("request_body"))) == _prompted()
    assert set(line) == FIELDS
    # Other keys' lines never carry a body: the exact-field tests above are alice's, and this:
    rid = new_id()
    headers = {**logged.bearer("alice"), "X-Request-Id": rid}
    assert logged.client.post("/api/chat", json=_prompted(), headers=headers).status_code == 200
    assert set(logged.line(rid)) == FIELDS
    for secret in logged.keys.values():
        assert all(secret not in text for text in logged.process.stdout.lines)


def test_a_text_line_cannot_be_split_by_the_path() -> None:
    lines: list[str] = []
    AccessLog(fmt="text", write=lines.append)(make_record(path="/api/x\n2026-01-01 200 GET /forged", status=400))
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert "/api/x\\n2026-01-01 200 GET /forged" in lines[0]


def test_a_rewritten_stream_logs_what_the_client_sent_and_received(logged: Logged, fake: FakeOllama) -> None:
    # The gateway asks Ollama for usage on this stream (a longer body upstream) and hides it.
    rid = new_id()
    body = json.dumps({**CHAT, "stream": True}).encode()
    response = logged.client.post(
        "/v1/chat/completions", content=body, headers={**logged.bearer("alice"), "X-Request-Id": rid}, timeout=10
    )
    assert response.status_code == 200
    assert b'"usage"' not in response.content
    assert fake.requests[-1].body_size > len(body)
    line = logged.line(rid)
    assert (line["bytes_in"], line["bytes_out"]) == (len(body), len(response.content))
    assert line["tokens_exact"] is True


def test_an_admin_write_naming_a_lone_surrogate_is_a_400_and_audited(logged: Logged) -> None:
    # "\ud800" is valid JSON (an escape) but no UTF-8 can carry it: the audit line once raised
    # while being written, which cost the answer too (a text/plain 500 without the admin headers).
    rid = new_id()
    headers = {**logged.bearer("alice"), "Content-Type": "application/json", "X-Request-Id": rid}
    answer = logged.client.post("/admin/api/keys", content=b'{"name": "\\ud800"}', headers=headers)
    assert (answer.status_code, answer.headers["content-type"], answer.json()) == (
        400,
        "application/json",
        {"error": "a key name is 1 to 64 printable characters without surrounding spaces"},
    )
    assert (answer.headers["x-frame-options"], answer.headers["cache-control"]) == ("DENY", "no-store")
    line = logged.line(rid)
    del line["time"]
    assert line == {
        "type": "audit",
        "request_id": rid,
        "key_id": logged.ids["alice"],
        "key_name": "alice",
        "client": "127.0.0.1",
        "action": "keys.create",
        "target": None,
        "target_name": "\ud800",
        "changed": [],
        "status": 400,
    }
    assert not [text for text in logged.process.stderr.lines if "Traceback" in text]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_no_value_makes_a_log_writer_raise(fmt: str) -> None:
    lines: list[str] = []
    odd = "\ud800 \udfff \x00 \u2028 é"
    record = make_record(
        request_id=odd, key_name=odd, client=odd, path=odd, route=odd, model=odd, upstream=odd, outcome=odd
    )
    AccessLog(fmt=fmt, write=lines.append, log_prompts=("*",))(record)
    AuditLog(fmt=fmt, write=lines.append)(
        action=odd, status=400, key_id=odd, key_name=odd, client=odd, request_id=odd, target=odd, target_name=odd
    )
    assert len(lines) == 2
    for line in lines:
        line.encode("utf-8")  # strict: a line any stdout can take
        assert "\n" not in line
    if fmt == "json":
        access, audit = (json.loads(line) for line in lines)
        assert (access["key_name"], access["path"], access["model"]) == (odd, odd, odd)
        assert (audit["action"], audit["target_name"], audit["key_name"]) == (odd, odd, odd)
    else:
        assert "\\ud800 \\udfff" in lines[0]
        assert "\\ud800 \\udfff" in lines[1]


def test_a_stdout_that_is_not_utf8_gets_an_escaped_line(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    monkeypatch.setattr("sys.stdout", io.TextIOWrapper(raw, encoding="ascii", write_through=True))
    AccessLog()(make_record(key_name="é", model="\U0001f600"))
    AuditLog(fmt="text")(action="keys.create", status=201, key_id="k1", key_name="é", client="ç", request_id="r1")
    access, audit = raw.getvalue().decode("ascii").splitlines()
    assert (json.loads(access)["key_name"], json.loads(access)["model"]) == ("é", "\U0001f600")
    assert '"key_name":"\\u00e9"' in access
    assert audit.endswith("key=\\xe9 (k1) client=\\u00e7 id=r1")
