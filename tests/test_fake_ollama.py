"""The fake Ollama itself speaks Ollama's wire format, checked with raw HTTP and the real clients."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import select
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.fake_ollama import QUEUE_FULL, RUNNER_FAILED, Behaviour, FakeOllama, StepGate

pytestmark = pytest.mark.timeout(10)

MODEL = "llama3.2"
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": MODEL, "messages": MESSAGES}
JSON_UTF8 = "application/json; charset=utf-8"
CREATED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z")
METRICS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeOllama) -> Iterator[FakeOllama]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
def http(fake: FakeOllama) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5) as client:
        yield client


def compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def ndjson(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body[:-1].split(b"\n")]


def sse(body: bytes) -> list[bytes]:
    frames = body.split(b"\n\n")
    assert frames[-1] == b""
    assert all(frame.startswith(b"data: ") and b"\n" not in frame for frame in frames[:-1])
    return [frame[len(b"data: ") :] for frame in frames[:-1]]


def raw_request(fake: FakeOllama, path: str, body: dict[str, object]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", fake.port), timeout=5)
    payload = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(payload)}\r\n\r\n"
    sock.sendall(head.encode() + payload)
    return sock


# basics


def test_root_version_and_head(http: httpx.Client) -> None:
    root = http.get("/")
    assert (root.status_code, root.headers["content-type"], root.content) == (
        200,
        "text/plain; charset=utf-8",
        b"Ollama is running",
    )
    head = http.head("/")
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "17", b"")
    version = http.get("/api/version")
    assert (version.headers["content-type"], version.content) == (JSON_UTF8, b'{"version":"0.33.0"}')
    assert "server" not in version.headers
    assert "date" in version.headers


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/api/nothing-here", 404, None),
        ("GET", "/api/chat", 405, "POST"),
        ("POST", "/api/tags", 405, "HEAD, GET"),
        ("GET", "/api/blobs/sha256:abc", 405, "HEAD, POST"),
        ("POST", "/api/delete", 405, "DELETE"),
        ("DELETE", "/v1/models", 405, "GET"),
    ],
)
def test_router_errors_are_plain_text(
    http: httpx.Client, method: str, path: str, status: int, allow: str | None
) -> None:
    response = http.request(method, path)
    body = b"404 page not found" if status == 404 else b"405 method not allowed"
    assert (response.status_code, response.headers["content-type"], response.content) == (status, "text/plain", body)
    assert response.headers.get("allow") == allow


def test_trailing_slash_redirects(http: httpx.Client) -> None:
    get = http.get("/api/tags/?x=1")
    assert (get.status_code, get.headers["location"]) == (301, "/api/tags?x=1")
    assert get.content == b'<a href="/api/tags?x=1">Moved Permanently</a>.\n\n'
    post = http.post("/api/chat/", json=CHAT)
    assert (post.status_code, post.headers["location"], post.content) == (307, "/api/chat", b"")


# native generation


def test_generate_stream_framing(http: httpx.Client) -> None:
    with http.stream("POST", "/api/generate", json={"model": MODEL, "prompt": "hi"}) as response:
        body = response.read()
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    lines = ndjson(body)
    assert [line["response"] for line in lines] == ["tok0 ", "tok1 ", "tok2 ", ""]
    assert all(list(line) == ["model", "created_at", "response", "done"] for line in lines[:-1])
    assert all(line["model"] == MODEL and CREATED_AT.fullmatch(line["created_at"]) for line in lines)
    final = lines[-1]
    assert list(final) == ["model", "created_at", "response", "done", "done_reason", "context", *METRICS]
    assert (final["done"], final["done_reason"], final["context"]) == (True, "stop", list(range(1, 11)))
    assert (final["prompt_eval_count"], final["eval_count"]) == (7, 3)
    assert all(isinstance(final[key], int) and final[key] > 0 for key in METRICS)


def test_chat_stream_false_aggregates(http: httpx.Client) -> None:
    response = http.post("/api/chat", json={**CHAT, "stream": False})
    assert response.headers["content-type"] == JSON_UTF8
    assert response.headers["content-length"] == str(len(response.content))
    assert not response.content.endswith(b"\n")
    value = response.json()
    assert list(value) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert value["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 "}
    assert (value["done_reason"], value["prompt_eval_count"], value["eval_count"]) == ("stop", 7, 3)


def test_stream_null_means_true_and_zero_metrics_are_omitted(fake: FakeOllama, http: httpx.Client) -> None:
    fake.behaviour = Behaviour(tokens=1, prompt_eval_count=0)
    response = http.post("/api/chat", json={**CHAT, "stream": None})
    assert response.headers["content-type"] == "application/x-ndjson"
    final = ndjson(response.content)[-1]
    assert "prompt_eval_count" not in final
    assert "prompt_eval_duration" not in final
    assert final["eval_count"] == 1


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/api/generate", {"model": MODEL}, "load"),
        ("/api/generate", {"model": MODEL, "prompt": "", "keep_alive": 0}, "unload"),
        ("/api/chat", {"model": MODEL, "messages": []}, "load"),
        ("/api/chat", {"model": MODEL, "keep_alive": "0s"}, "unload"),
    ],
)
def test_load_and_unload_answers(
    fake: FakeOllama, http: httpx.Client, path: str, body: dict[str, object], reason: str
) -> None:
    response = http.post(path, json=body)
    assert response.headers["content-type"] == JSON_UTF8
    assert not response.content.endswith(b"\n")
    value = response.json()
    assert CREATED_AT.fullmatch(value.pop("created_at"))
    empty = {"response": ""} if path == "/api/generate" else {"message": {"role": "assistant", "content": ""}}
    assert value == {"model": MODEL, **empty, "done": True, "done_reason": reason}
    assert fake.loaded == (["llama3.2:latest"] if reason == "load" else [])


def test_num_predict_stops_with_length(http: httpx.Client) -> None:
    value = http.post(
        "/api/generate", json={"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 2}}
    )
    assert (value.json()["response"], value.json()["done_reason"]) == ("tok0 tok1 ", "length")


def test_thinking_comes_before_content(fake: FakeOllama, http: httpx.Client) -> None:
    fake.behaviour = Behaviour(tokens=1, thinking_tokens=2)
    lines = ndjson(http.post("/api/chat", json={**CHAT, "model": "qwen3"}).content)
    assert [line["message"] for line in lines] == [
        {"role": "assistant", "content": "", "thinking": "think0 "},
        {"role": "assistant", "content": "", "thinking": "think1 "},
        {"role": "assistant", "content": "tok0 "},
        {"role": "assistant", "content": ""},
    ]
    plain = http.post("/api/chat", json={**CHAT, "model": "qwen3", "think": False, "stream": False}).json()
    assert plain["message"] == {"role": "assistant", "content": "tok0 "}


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/generate", b'{"model":"nope","prompt":"x"}', 404, "model 'nope' not found"),
        ("/api/generate", b'{"prompt":"x"}', 404, "model '' not found"),
        ("/api/chat", b'{"messages":[]}', 400, "model is required"),
        ("/api/chat", b"", 400, "missing request body"),
        ("/api/chat", b"  \n", 400, "missing request body"),
        ("/api/chat", b'{"model":', 400, "unexpected EOF"),
        ("/api/chat", b"xyz", 400, "invalid character 'x' looking for beginning of value"),
        ("/api/chat", b'{"model":"m",}', 400, "invalid character '}' looking for beginning of object key string"),
        ("/api/chat", b'{"model" 1}', 400, "invalid character '1' after object key"),
        ("/api/chat", b"nul", 400, "unexpected EOF"),
        ("/api/chat", b"[1]", 400, "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (
            "/api/chat",
            b'{"model":"llama3.2","stream":"yes"}',
            400,
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        (
            "/api/chat",
            b'{"model":"llama3.2","messages":[{"role":"user","content":1}]}',
            400,
            "json: cannot unmarshal number into Go struct field ChatRequest.messages.content of type string",
        ),
        ("/api/generate", b'{"model":"llama3.2","keep_alive":"300"}', 400, 'time: missing unit in duration "300"'),
        (
            "/api/generate",
            b'{"model":"llama3.2","prompt":"x","think":true}',
            400,
            '"llama3.2" does not support thinking',
        ),
        (
            "/api/chat",
            b'{"model":"nomic-embed-text","messages":[{"role":"user"}]}',
            400,
            '"nomic-embed-text" does not support chat',
        ),
        ("/api/embed", b'{"model":"nope","input":"x"}', 404, 'model "nope" not found, try pulling it first'),
        ("/api/show", b'{"model":"nope"}', 404, "model 'nope:latest' not found"),
        ("/api/copy", b'{"source":"nope","destination":"x"}', 404, 'model "nope" not found'),
    ],
)
def test_native_errors(http: httpx.Client, path: str, body: bytes, status: int, error: str) -> None:
    response = http.post(path, content=body)
    assert (response.status_code, response.headers["content-type"]) == (status, JSON_UTF8)
    assert response.content == json.dumps({"error": error}, separators=(",", ":"), ensure_ascii=False).encode()


def test_field_names_match_case_insensitively(http: httpx.Client) -> None:
    response = http.post("/api/generate", json={"Model": MODEL, "PROMPT": "x", "Stream": False})
    assert response.json()["response"] == "tok0 tok1 tok2 "


def test_json_is_escaped_like_go(fake: FakeOllama, http: httpx.Client) -> None:
    fake.behaviour = Behaviour(pieces=("<think>", "a&b", "\u2028"))
    response = http.post("/api/generate", json={"model": MODEL, "prompt": "x", "stream": False})
    assert b'"response":"\\u003cthink\\u003ea\\u0026b\\u2028"' in response.content
    assert response.json()["response"] == "<think>a&b\u2028"
    show = http.post("/api/show", json={"model": MODEL})
    assert b"\\u003c|eot_id|\\u003e" in show.content
    assert b"<" not in show.content


# the official ollama client, straight at the fake


def test_ollama_client(fake: FakeOllama, tmp_path: Path) -> None:
    with ollama.Client(host=fake.url) as client:
        parts = list(client.chat(model=MODEL, messages=MESSAGES, stream=True))
        assert [part.message.content for part in parts] == ["tok0 ", "tok1 ", "tok2 ", ""]
        assert (parts[-1].done, parts[-1].done_reason, parts[-1].eval_count) == (True, "stop", 3)
        generated = client.generate(model=MODEL, prompt="x")
        assert (generated.response, generated.prompt_eval_count) == ("tok0 tok1 tok2 ", 7)
        embedded = client.embed(model="nomic-embed-text", input=["a", "b"])
        assert [len(vector) for vector in embedded.embeddings] == [8, 8]
        assert embedded.embeddings[0] != embedded.embeddings[1]
        assert len(client.embeddings(model="nomic-embed-text", prompt="a").embedding) == 8
        assert [m.model for m in client.list().models] == ["llama3.2:latest", "qwen3:latest", "nomic-embed-text:latest"]
        assert client.show(MODEL).details.family == "llama"
        assert [m.model for m in client.ps().models] == ["llama3.2:latest", "nomic-embed-text:latest"]
        blob = tmp_path / "weights.bin"
        blob.write_bytes(b"weights" * 100)
        digest = client.create_blob(blob)
        assert digest in fake.blobs
        with pytest.raises(ollama.ResponseError) as caught:
            client.chat(model="missing", messages=MESSAGES)
        assert (caught.value.status_code, caught.value.error) == (404, "model 'missing' not found")


# progress streams


def test_pull_progress_and_errors(fake: FakeOllama, http: httpx.Client) -> None:
    response = http.post("/api/pull", json={"model": "tinyllama"})
    lines = ndjson(response.content)
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = lines[1]
    assert list(layer) == ["status", "digest", "total"]
    assert layer["status"] == "pulling " + layer["digest"][7:19]
    assert lines[3]["completed"] == layer["total"]
    assert "tinyllama:latest" in fake.models

    missing = http.post("/api/pull", json={"model": "nope"})
    assert (missing.status_code, missing.headers["content-type"]) == (200, "application/x-ndjson")
    assert missing.content == b'{"status":"pulling manifest"}\n{"error":"pull model manifest: file does not exist"}\n'

    whole = http.post("/api/pull", json={"model": "nope", "stream": False})
    assert (whole.status_code, whole.headers["content-type"]) == (500, "application/json")
    assert whole.content == b'{"error":"pull model manifest: file does not exist"}'
    done = http.post("/api/pull", json={"model": MODEL, "stream": False})
    assert (done.status_code, done.headers["content-type"], done.content) == (
        200,
        "application/json",
        b'{"status":"success"}',
    )


def test_push_and_create(fake: FakeOllama, http: httpx.Client) -> None:
    pushed = ndjson(http.post("/api/push", json={"model": MODEL}).content)
    assert pushed[0] == {"status": "retrieving manifest"}
    assert pushed[-2:] == [{"status": "pushing manifest"}, {"status": "success"}]
    created = ndjson(http.post("/api/create", json={"model": "mine", "from": MODEL}).content)
    assert created[-2:] == [{"status": "writing manifest"}, {"status": "success"}]
    assert "mine:latest" in fake.models
    invalid = http.post("/api/create", json={"model": "mine"})
    assert (invalid.status_code, invalid.json()) == (400, {"error": "neither 'from' or 'files' was specified"})


def test_copy_and_delete(fake: FakeOllama, http: httpx.Client) -> None:
    copied = http.post("/api/copy", json={"source": MODEL, "destination": "backup"})
    assert (copied.status_code, copied.content, copied.headers["content-length"]) == (200, b"", "0")
    assert "content-type" not in copied.headers
    assert "backup:latest" in fake.models
    deleted = http.request("DELETE", "/api/delete", json={"model": "backup"})
    assert (deleted.status_code, deleted.content) == (200, b"")
    again = http.request("DELETE", "/api/delete", json={"model": "backup"})
    assert (again.status_code, again.json()) == (404, {"error": "model 'backup' not found"})


def test_blob_round_trip(fake: FakeOllama, http: httpx.Client) -> None:
    data = b"model-weights" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    missing = http.head(f"/api/blobs/{digest}")
    assert (missing.status_code, missing.headers["content-type"], missing.content) == (404, JSON_UTF8, b"")
    created = http.post(f"/api/blobs/{digest}", content=data)
    assert (created.status_code, created.content, created.headers["content-length"]) == (201, b"", "0")
    assert http.head(f"/api/blobs/{digest}").status_code == 200
    assert http.head(f"/api/blobs/sha256-{digest[7:]}").status_code == 200
    assert http.post(f"/api/blobs/{digest}", content=data).status_code == 200
    assert fake.blobs == {digest}
    recorded = fake.requests[1]
    assert (recorded.body_size, recorded.body_sha256) == (len(data), digest[7:])

    wrong = "sha256:" + "0" * 64
    mismatch = http.post(f"/api/blobs/{wrong}", content=b"other")
    actual = "sha256:" + hashlib.sha256(b"other").hexdigest()
    assert mismatch.status_code == 400
    assert mismatch.json() == {"error": f'digest mismatch, expected "{wrong}", got "{actual}"'}
    invalid = http.post("/api/blobs/md5:abc", content=b"x")
    assert (invalid.status_code, invalid.json()) == (400, {"error": "invalid digest format"})


# /v1


@pytest.mark.parametrize("include_usage", [False, True])
def test_v1_chat_sse_layout(http: httpx.Client, include_usage: bool) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": include_usage}}
    response = http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    assert "cache-control" not in response.headers
    frames = sse(response.content)
    assert frames[-1] == b"[DONE]"
    events = [json.loads(frame) for frame in frames[:-1]]
    assert len({event["id"] for event in events}) == 1
    assert re.fullmatch(r"chatcmpl-\d{1,3}", events[0]["id"])
    assert len({event["created"] for event in events}) == 1
    keys = ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert all(list(event)[:6] == keys and event["object"] == "chat.completion.chunk" for event in events)
    assert [event["choices"] for event in events[:4]] == [
        [{"index": 0, "delta": {"role": "assistant", "content": "tok0 "}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "tok1 "}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "tok2 "}, "finish_reason": None}],
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    ]
    if include_usage:
        assert events[4]["choices"] == []
        assert events[4]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert len(events) == (5 if include_usage else 4)


def test_v1_chat_json_and_errors(fake: FakeOllama, http: httpx.Client) -> None:
    done = http.post("/v1/chat/completions", json=CHAT)
    assert done.headers["content-type"] == "application/json"
    assert done.content.endswith(b"}\n")
    value = done.json()
    assert (value["object"], value["model"], value["system_fingerprint"]) == ("chat.completion", MODEL, "fp_ollama")
    assert value["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "tok0 tok1 tok2 "}, "finish_reason": "stop"}
    ]
    assert value["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}

    empty = http.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert (empty.status_code, empty.headers["content-type"]) == (400, JSON_UTF8)
    assert empty.content == compact(
        {
            "error": {
                "message": "[] is too short - 'messages'",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    )
    unknown = http.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert (unknown.status_code, unknown.headers["content-type"]) == (404, "application/json")
    assert (
        unknown.content
        == compact(
            {"error": {"message": "model 'nope' not found", "type": "not_found_error", "param": None, "code": None}}
        )
        + b"\n"
    )
    broken = http.post("/v1/chat/completions", content=b"{")
    assert (broken.status_code, broken.json()["error"]["message"]) == (400, "unexpected EOF")
    assert http.post("/v1/chat/completions", content=b"").json()["error"]["message"] == "EOF"


def test_v1_completions_stream_layout(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
    frames = sse(http.post("/v1/completions", json=body).content)
    assert frames[-1] == b"[DONE]"
    events = [json.loads(frame) for frame in frames[:-1]]
    assert all(
        list(event)[:6] == ["id", "object", "created", "choices", "model", "system_fingerprint"] for event in events
    )
    assert [event["choices"] for event in events] == [
        [{"text": "tok0 ", "index": 0, "finish_reason": None}],
        [{"text": "tok1 ", "index": 0, "finish_reason": None}],
        [{"text": "tok2 ", "index": 0, "finish_reason": None}],
        [{"text": "", "index": 0, "finish_reason": "stop"}],
        [],
    ]
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert [event["usage"] for event in events] == [zero] * 4 + [
        {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    ]


def test_v1_embeddings_and_models(fake: FakeOllama, http: httpx.Client) -> None:
    floats = http.post("/v1/embeddings", json={"model": "nomic-embed-text", "input": ["a"]}).json()
    assert (floats["object"], floats["model"], floats["usage"]) == (
        "list",
        "nomic-embed-text",
        {"prompt_tokens": 7, "total_tokens": 7},
    )
    packed = http.post("/v1/embeddings", json={"model": "nomic-embed-text", "input": "a", "encoding_format": "base64"})
    decoded = struct.unpack("<8f", base64.b64decode(packed.json()["data"][0]["embedding"]))
    assert list(decoded) == floats["data"][0]["embedding"]
    bad = http.post("/v1/embeddings", json={"model": "nomic-embed-text", "input": "a", "encoding_format": "hex"})
    assert (
        bad.json()["error"]["message"]
        == "Invalid value for 'encoding_format' = hex. Supported values: ['float', 'base64']."
    )

    one = http.get("/v1/models/llama3.2")
    assert one.json() == {"id": MODEL, "object": "model", "created": one.json()["created"], "owned_by": "library"}
    assert http.get("/v1/models/nope").json()["error"]["message"] == "model 'nope:latest' not found"
    fake.models = []
    assert http.get("/v1/models").content == b'{"object":"list","data":null}\n'
    assert http.get("/api/tags").content == b'{"models":[]}'


def test_openai_sdk(fake: FakeOllama) -> None:
    with openai.OpenAI(base_url=fake.url + "/v1", api_key="unused", max_retries=0) as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        assert completion.choices[0].message.content == "tok0 tok1 tok2 "
        assert completion.usage is not None
        assert completion.usage.total_tokens == 10
        stream = client.chat.completions.create(  # type: ignore[call-overload]
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        assert [c.choices[0].delta.content for c in chunks if c.choices] == ["tok0 ", "tok1 ", "tok2 ", None]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 3
        embeddings = client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
        assert [len(item.embedding) for item in embeddings.data] == [8, 8]
        assert [model.id for model in client.models.list()] == [
            "llama3.2:latest",
            "qwen3:latest",
            "nomic-embed-text:latest",
        ]
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
        assert caught.value.body == {
            "message": "model 'nope' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }


# timing, lockstep, failures and disconnects


def test_status_line_waits_for_the_first_chunk(fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(first_byte_delay=0.3)
    sock = raw_request(fake, "/api/generate", {"model": MODEL, "prompt": "x"})
    try:
        fake.wait_for_request()
        readable, _, _ = select.select([sock], [], [], 0.15)
        assert readable == [], "bytes arrived during the model load"
        received = b""
        while b"tok0" not in received:
            data = sock.recv(65536)
            assert data
            received += data
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        sock.close()


def test_gate_releases_one_chunk_at_a_time(fake: FakeOllama, http: httpx.Client) -> None:
    gate = StepGate()
    fake.behaviour = Behaviour(gate=gate)
    with http.stream("POST", "/api/generate", json={"model": MODEL, "prompt": "x"}) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["response"] == "tok0 "
        for count, expected in enumerate(("tok1 ", "tok2 ", ""), start=2):
            with pytest.raises(TimeoutError):
                gate.wait_sent(count, timeout=0.05)
            gate.release()
            assert json.loads(next(lines))["response"] == expected
    recorded = fake.wait_for_request()
    assert recorded.completed.wait(1)
    assert (recorded.chunks_sent, gate.sent) == (4, 4)


def test_fail_after_writes_an_error_line(fake: FakeOllama, http: httpx.Client) -> None:
    fake.behaviour = Behaviour(fail_after=2)
    response = http.post("/api/generate", json={"model": MODEL, "prompt": "x"})
    assert response.status_code == 200
    lines = ndjson(response.content)
    assert [line.get("response") for line in lines[:2]] == ["tok0 ", "tok1 "]
    assert lines[2:] == [{"error": RUNNER_FAILED}]
    with ollama.Client(host=fake.url) as client, pytest.raises(ollama.ResponseError) as caught:
        for _ in client.chat(model=MODEL, messages=MESSAGES, stream=True):
            pass
    assert (caught.value.error, caught.value.status_code) == (RUNNER_FAILED, -1)

    fake.behaviour = Behaviour(fail_after=0)
    early = http.post("/api/chat", json=CHAT)
    assert (early.status_code, early.headers["content-type"], early.content) == (
        500,
        "application/json",
        compact({"error": RUNNER_FAILED}),
    )
    whole = http.post("/api/chat", json={**CHAT, "stream": False})
    assert (whole.status_code, whole.headers["content-type"]) == (500, JSON_UTF8)


def test_fail_after_on_v1_ends_without_done(fake: FakeOllama, http: httpx.Client) -> None:
    fake.behaviour = Behaviour(fail_after=1)
    frames = sse(http.post("/v1/chat/completions", json={**CHAT, "stream": True}).content)
    assert [json.loads(frame)["model"] for frame in frames] == [MODEL, ""]
    assert json.loads(frames[-1])["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]


def test_cut_after_drops_the_connection(fake: FakeOllama, http: httpx.Client) -> None:
    fake.behaviour = Behaviour(tokens=5, cut_after=2)
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/api/chat", json=CHAT) as response,
    ):
        received.extend(response.iter_lines())
    assert [json.loads(line)["message"]["content"] for line in received] == ["tok0 ", "tok1 "]
    recorded = fake.wait_for_request()
    assert (recorded.cut, recorded.chunks_sent, recorded.completed.is_set()) == (True, 2, False)
    assert not recorded.client_disconnected.is_set()

    fake.behaviour = Behaviour(cut_after=0)
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/api/chat", json=CHAT)


def test_cut_reset_sends_rst(fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=5, cut_after=1, cut_reset=True)
    received = bytearray()
    # A FIN would read as the end (b""); what was sent before the reset still arrives first.
    with raw_request(fake, "/api/chat", dict(CHAT)) as sock, pytest.raises(ConnectionResetError):
        _read_to_end(sock, received)
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert fake.wait_for_request().cut


def test_header_names_are_written_as_go_writes_them(fake: FakeOllama) -> None:
    """Go canonicalises names (``Content-Type``); the fake must not hand proxies lower case."""
    with raw_request(fake, "/api/generate", {"model": MODEL, "prompt": "x"}) as sock:
        head = read_head(sock)
    names = [line.split(b":")[0] for line in head.split(b"\r\n")[1:]]
    assert sorted(names) == [b"Content-Type", b"Date", b"Transfer-Encoding"]


def _read_to_end(sock: socket.socket, received: bytearray) -> None:
    for _ in range(100):
        data = sock.recv(65536)
        if not data:
            return
        received += data


def read_head(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        data = sock.recv(65536)
        assert data
        received += data
    return received.split(b"\r\n\r\n")[0]


def test_hang_sees_the_client_leave(fake: FakeOllama, http: httpx.Client) -> None:
    fake.behaviour = Behaviour(hang=True)
    with pytest.raises(httpx.ReadTimeout):
        http.post("/api/chat", json=CHAT, timeout=httpx.Timeout(5, read=0.2))
    recorded = fake.wait_for_request()
    assert recorded.client_disconnected.wait(1)
    assert recorded.disconnected_at is not None
    assert recorded.disconnected_at >= recorded.received_at
    assert (recorded.status, recorded.chunks_sent, recorded.completed.is_set()) == (None, 0, False)


def test_disconnect_mid_stream_stops_emitting(fake: FakeOllama, http: httpx.Client) -> None:
    fake.behaviour = Behaviour(tokens=200, token_delay=0.02)
    with http.stream("POST", "/api/chat", json=CHAT) as response:
        lines = response.iter_lines()
        next(lines)
        next(lines)
    recorded = fake.wait_for_request()
    assert recorded.client_disconnected.wait(1)
    sent = recorded.chunks_sent
    time.sleep(0.1)
    assert recorded.chunks_sent == sent < 20
    assert not recorded.completed.is_set()


def test_forced_errors(fake: FakeOllama, http: httpx.Client) -> None:
    fake.behaviour = Behaviour(status=503)
    busy = http.post("/api/generate", json={"model": MODEL, "prompt": "x"})
    assert (busy.status_code, busy.headers["content-type"], busy.content) == (
        503,
        JSON_UTF8,
        compact({"error": QUEUE_FULL}),
    )
    compat = http.post("/v1/chat/completions", json=CHAT)
    assert compat.status_code == 503
    assert (
        compat.content
        == compact({"error": {"message": QUEUE_FULL, "type": "api_error", "param": None, "code": None}}) + b"\n"
    )
    assert http.get("/api/tags").status_code == 200  # knobs apply to inference routes by default

    fake.behaviour = Behaviour(status=500, error="runner refused", error_from_stream=True)
    refused = http.post("/api/chat", json=CHAT)
    assert (refused.status_code, refused.headers["content-type"], refused.content) == (
        500,
        "application/json",
        b'{"error":"runner refused"}',
    )
    fake.behaviour = Behaviour(status=500, paths=frozenset({"/api/tags"}))
    assert http.get("/api/tags").status_code == 500
    assert http.post("/api/chat", json={**CHAT, "stream": False}).status_code == 200


def test_host_and_origin_checks(fake: FakeOllama, http: httpx.Client) -> None:
    assert http.get("/api/tags", headers={"Host": "evil.example"}).status_code == 200  # off by default
    fake.behaviour = Behaviour(host_check=True)
    for headers in ({"Host": "evil.example"}, {"Origin": "http://evil.example"}):
        refused = http.get("/api/tags", headers=headers)
        assert (refused.status_code, refused.content, refused.headers["content-length"]) == (403, b"", "0")
        assert "content-type" not in refused.headers
    for host in ("localhost:11434", "ollama.internal", "10.0.0.2:11434"):
        assert http.get("/api/tags", headers={"Host": host}).status_code == 200
    allowed = http.get("/api/tags", headers={"Origin": "http://localhost:3000"})
    assert (allowed.headers["access-control-allow-origin"], allowed.headers["vary"]) == (
        "http://localhost:3000",
        "Origin",
    )
    preflight = http.options("/api/chat", headers={"Origin": "app://desktop"})
    assert (preflight.status_code, preflight.headers["access-control-max-age"]) == (204, "43200")


def test_requests_are_recorded(fake: FakeOllama, http: httpx.Client) -> None:
    sent = http.post("/api/chat?trace=1", json={**CHAT, "stream": False}, headers={"X-Test": "one"}).request
    big = b"x" * ((1 << 20) + 1)
    http.post("/api/embed", content=big)
    first, second = fake.wait_for_request(1), fake.wait_for_request(2)
    assert (first.method, first.path, first.raw_path, first.query) == ("POST", "/api/chat", "/api/chat", "trace=1")
    assert first.header("x-test") == "one"
    assert ("x-test", "one") in first.headers
    assert first.json == {**CHAT, "stream": False}
    assert first.body == sent.content
    assert (first.status, first.completed.is_set()) == (200, True)
    assert (second.body, second.json, second.body_size) == (None, None, len(big))
    assert second.body_sha256 == hashlib.sha256(big).hexdigest()
    assert [r.path for r in fake.requests] == ["/api/chat", "/api/embed"]
    with pytest.raises(TimeoutError):
        fake.wait_for_request(3, timeout=0.05)


def test_stop_ends_hanging_requests() -> None:
    server = FakeOllama(models=[MODEL])
    server.start()
    server.behaviour = Behaviour(hang=True)
    sock = raw_request(server, "/api/generate", {"model": MODEL, "prompt": "x"})
    try:
        server.wait_for_request()
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3
        assert sock.recv(1024) == b""
    finally:
        sock.close()
    with pytest.raises(RuntimeError):
        _ = server.url
