from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Message

from gateway.errors import (
    BodyTooLarge,
    DatabaseFailed,
    DatabaseUnavailable,
    Dialect,
    GatewayError,
    InternalError,
    RateLimited,
    UpstreamBroken,
    UpstreamTimeout,
    UpstreamUnavailable,
    render,
    render_in_stream,
)
from gateway.routes.responses import ErrorResponse


@pytest.mark.parametrize(
    ("error", "status", "openai_type", "code"),
    [
        (UpstreamUnavailable("upstream unavailable"), 502, "api_error", "upstream_unavailable"),
        (UpstreamTimeout("upstream timed out"), 504, "api_error", "upstream_timeout"),
        (BodyTooLarge("too big"), 413, "invalid_request_error", "request_too_large"),
    ],
)
def test_each_dialect_renders_the_same_error(error: GatewayError, status: int, openai_type: str, code: str) -> None:
    assert error.status == status
    assert json.loads(render(error, Dialect.NATIVE)) == {"error": error.message}
    assert json.loads(render(error, Dialect.OPENAI)) == {
        "error": {"message": error.message, "type": openai_type, "param": None, "code": code}
    }
    anthropic = json.loads(render(error, Dialect.ANTHROPIC, "rid1"))
    assert anthropic == {
        "type": "error",
        "error": {"type": openai_type, "message": error.message},
        "request_id": "rid1",
    }


def test_in_stream_frames() -> None:
    error = UpstreamBroken("upstream connection lost")
    assert render_in_stream(error, Dialect.NATIVE, event_stream=False) == b'{"error":"upstream connection lost"}\n'
    sse = render_in_stream(error, Dialect.OPENAI, event_stream=True)
    assert sse.startswith(b"data: ")
    assert sse.endswith(b"\n\n")
    assert json.loads(sse[6:])["error"]["code"] == "upstream_connection_lost"
    anthropic = render_in_stream(error, Dialect.ANTHROPIC, event_stream=True)
    assert anthropic.startswith(b"event: error\ndata: ")
    assert json.loads(anthropic.split(b"data: ", 1)[1])["error"]["type"] == "api_error"


def _sent(response: ErrorResponse) -> list[Message]:
    messages: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("a refusal reads nothing")

    async def send(message: Message) -> None:
        messages.append(message)

    asyncio.run(response({"type": "http"}, receive, send))
    return messages


def test_the_error_response_is_an_asgi_app_with_the_framing_then_the_exchange_then_the_errors_headers() -> None:
    error = RateLimited("rate limit reached: 2 requests per minute", headers={"Retry-After": "30"})
    exchange = [(b"x-request-id", b"rid1"), (b"vary", b"Origin")]
    body = b'{"error":{"message":"rate limit reached: 2 requests per minute","type":"rate_limit_error",' + (
        b'"param":null,"code":"rate_limit_exceeded"}}'
    )
    assert _sent(ErrorResponse(error, Dialect.OPENAI, request_id="rid1", headers=exchange)) == [
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", b"rid1"),
                (b"vary", b"Origin"),
                (b"retry-after", b"30"),
            ],
        },
        {"type": "http.response.body", "body": body},
    ]
    anthropic = _sent(ErrorResponse(error, Dialect.ANTHROPIC, request_id="rid1"))[1]["body"]
    assert json.loads(anthropic)["request_id"] == "rid1"
    assert _sent(ErrorResponse(error))[1]["body"] == b'{"error":"rate limit reached: 2 requests per minute"}'


@pytest.mark.parametrize(
    ("error", "status", "code", "answer", "logged"),
    [
        (InternalError(), 500, "internal_error", "internal error", "internal error"),
        (DatabaseFailed("file is not a database"), 500, "internal_error", "internal error", "file is not a database"),
        (
            DatabaseUnavailable("database is locked"),
            503,
            "database_unavailable",
            "database unavailable, try again later",
            "database is locked",
        ),
    ],
)
def test_an_internal_failure_tells_the_client_nothing_and_the_log_its_reason(
    error: InternalError, status: int, code: str, answer: str, logged: str
) -> None:
    assert (error.status, error.code, error.message, str(error)) == (status, code, answer, logged)
    assert json.loads(render(error, Dialect.NATIVE)) == {"error": answer}
