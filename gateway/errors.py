"""The gateway's own errors and how each surface's dialect renders them.

Every refusal the gateway makes is a ``GatewayError`` subclass that knows its status; one renderer
per dialect turns it into the body that surface's clients parse:

* ``native`` (``/api/*`` and ``/``): ``{"error": "<message>"}`` like Ollama itself;
* ``openai`` (``/v1/*``): ``{"error": {"message", "type", "param", "code"}}``;
* ``anthropic`` (``/v1/messages``): ``{"type": "error", "error": {"type", "message"}}``.

Stable ``code`` values (documented in README): see each class.
"""

from __future__ import annotations

import enum
import json


def shown(text: str, limit: int = 40) -> str:
    """Input quoted for an error message, cut short: a message never echoes a megabyte back."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


class Dialect(enum.Enum):
    NATIVE = "native"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


class GatewayError(Exception):
    status: int = 500
    outcome: str = "error"
    code: str = "gateway_error"
    openai_type: str = "api_error"
    anthropic_type: str = "api_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(GatewayError):
    status = 400
    outcome = "bad_request"
    code = "bad_request"
    openai_type = anthropic_type = "invalid_request_error"


class InvalidPath(BadRequest):
    code = "invalid_path"


class NotFound(GatewayError):
    status = 404
    outcome = "not_found"
    code = "not_found"
    openai_type = anthropic_type = "not_found_error"


class ModelNotFound(NotFound):
    """No server of the fleet has the model (Ollama's own words for it)."""

    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    outcome = "bad_request"
    code = "method_not_allowed"
    openai_type = anthropic_type = "invalid_request_error"


class BodyTooLarge(GatewayError):
    status = 413
    outcome = "body_too_large"
    code = "request_too_large"
    openai_type = anthropic_type = "invalid_request_error"


class UpstreamUnavailable(GatewayError):
    """Ollama refused the connection or broke it before answering."""

    status = 502
    code = "upstream_unavailable"
    outcome = "upstream_error"


class UpstreamNotReached(UpstreamUnavailable):
    """No connection to Ollama could be made (refused, unroutable, TLS failed): the request
    never left the gateway, so another server may take it. Its code stays the documented one."""


class UpstreamBusy(UpstreamUnavailable):
    """The gateway's own connection cap towards this upstream is reached: capacity, not a fault."""

    status = 503
    code = "upstream_busy"
    anthropic_type = "overloaded_error"


class UpstreamBroken(UpstreamUnavailable):
    """Ollama's connection failed after the response had started."""

    code = "upstream_connection_lost"


class UpstreamTimeout(GatewayError):
    status = 504
    outcome = "upstream_timeout"
    code = "upstream_timeout"


class UpstreamConnectTimeout(UpstreamTimeout):
    """No connection to Ollama could be made in time: the request never reached it."""


def render(error: GatewayError, dialect: Dialect, request_id: str = "") -> bytes:
    """The whole response body for ``error`` in ``dialect`` (sent with application/json)."""
    if dialect is Dialect.NATIVE:
        body: object = {"error": error.message}
    elif dialect is Dialect.OPENAI:
        body = {"error": _openai_object(error)}
    else:
        body = {
            "type": "error",
            "error": {"type": error.anthropic_type, "message": error.message},
            "request_id": request_id,
        }
    return json.dumps(body, separators=(",", ":")).encode()


def render_in_stream(error: GatewayError, dialect: Dialect, event_stream: bool) -> bytes:
    """A final frame ending a stream whose status line already went out.

    NDJSON gets one ``{"error": ...}`` line, which Ollama itself writes and every native client
    raises on; SSE gets a ``data:`` event with an ``error`` key, on which openai-python raises.
    """
    if not event_stream:
        return json.dumps({"error": error.message}, separators=(",", ":")).encode() + b"\n"
    if dialect is Dialect.ANTHROPIC:
        payload = {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}
        return b"event: error\ndata: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    payload_openai = {"error": _openai_object(error)}
    return b"data: " + json.dumps(payload_openai, separators=(",", ":")).encode() + b"\n\n"


def _openai_object(error: GatewayError) -> dict[str, object]:
    return {"message": error.message, "type": error.openai_type, "param": None, "code": error.code}


class Unauthorized(GatewayError):
    status = 401
    outcome = "unauthorized"
    code = "invalid_api_key"
    openai_type = "invalid_request_error"
    anthropic_type = "authentication_error"


class Forbidden(GatewayError):
    status = 403
    outcome = "forbidden"
    code = "permission_denied"
    openai_type = anthropic_type = "permission_error"


class TooManyRequests(GatewayError):
    status = 429
    outcome = "rate_limited"
    code = "rate_limit_exceeded"
    openai_type = anthropic_type = "rate_limit_error"


class AuthThrottled(TooManyRequests):
    outcome = "auth_throttled"
    code = "too_many_failed_attempts"


class RateLimited(TooManyRequests):
    """A per-key limit (requests, tokens, concurrency) is reached: policy, not capacity."""


class QueueTimeout(GatewayError):
    """No upstream slot became free in time: capacity, not policy."""

    status = 503
    code = "queue_timeout"
    outcome = "queue_timeout"
    anthropic_type = "overloaded_error"


class GatewayShutdown(GatewayError):
    """The gateway is shutting down and its grace period is over (or the exit was forced): a
    request still open ends with this, in its dialect, instead of being cut."""

    status = 503
    code = "gateway_shutdown"
    outcome = "shutdown"
    anthropic_type = "overloaded_error"


class LimiterUnavailable(GatewayError):
    """The shared limit store is down and the gateway is configured to fail closed."""

    status = 503
    code = "limiter_unavailable"
    anthropic_type = "overloaded_error"


class HeadersTooLarge(GatewayError):
    """A request head past the server's limits (answered before the application sees it)."""

    status = 431
    outcome = "headers_too_large"
    code = "request_header_fields_too_large"
    openai_type = anthropic_type = "invalid_request_error"


class ConnectionsExhausted(GatewayError):
    """A new connection while the process is near its file-descriptor limit."""

    status = 503
    code = "too_many_connections"
    outcome = "unavailable"
    anthropic_type = "overloaded_error"


class GatewayBusy(GatewayError):
    """The gateway cannot take this request's body now: too many bytes of request bodies are held
    already (``GATEWAY_MAX_BUFFERED_BYTES``), or the process that reads large bodies failed."""

    status = 503
    code = "gateway_busy"
    outcome = "busy"
    anthropic_type = "overloaded_error"
