from __future__ import annotations

import json

import pytest

from gateway.errors import (
    BodyTooLarge,
    Dialect,
    GatewayError,
    UpstreamBroken,
    UpstreamTimeout,
    UpstreamUnavailable,
    render,
    render_in_stream,
)


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
