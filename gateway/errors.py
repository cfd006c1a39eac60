"""The gateway's own errors: one tree, each error knowing its status, and how each surface's
dialect renders them.

The tree, with each error's status and ``code``::

    GatewayError                        500  gateway_error
    ├── BadRequest                      400  bad_request
    │   └── InvalidPath                      invalid_path
    ├── Unauthorized                    401  invalid_api_key
    ├── Forbidden                       403  permission_denied
    ├── NotFound                        404  not_found
    │   └── ModelNotFound                    model_not_found
    ├── Conflict                        409  conflict
    ├── BodyTooLarge                    413  request_too_large
    ├── TooManyRequests                 429  rate_limit_exceeded
    │   ├── AuthThrottled                    too_many_failed_attempts
    │   └── RateLimited                      (per-key limits: policy)
    ├── InternalError                   500  internal_error
    │   └── DatabaseFailed                   (SQLite failed: a file that is not a database, ...)
    │       └── DatabaseUnavailable     503  database_unavailable
    ├── UpstreamUnavailable             502  upstream_unavailable
    │   ├── UpstreamNotReached               (the request never left: another server may take it)
    │   ├── UpstreamBusy                503  upstream_busy
    │   └── UpstreamBroken                   upstream_connection_lost
    ├── UpstreamTimeout                 504  upstream_timeout
    │   └── UpstreamConnectTimeout           (the request never reached it)
    ├── QueueTimeout                    503  queue_timeout (capacity)
    ├── GatewayShutdown                 503  gateway_shutdown
    ├── LimiterUnavailable              503  limiter_unavailable
    ├── HeadersTooLarge                 431  request_header_fields_too_large
    ├── ConnectionsExhausted            503  too_many_connections
    └── GatewayBusy                     503  gateway_busy

Each backend's errors are translated into this tree once, where the backend is called: SQLite's in
``database/sqlite.py`` (``Database`` runs every statement), Redis's in ``policies/limits/redis.py``, the
upstream clients' in ``proxy/upstream/`` (its ``__init__`` words every failure; httpx's exceptions
are mapped in ``httpx_impl._translated``). Nothing above those seams sees a backend's exception.
The key and usage refusals the CLI prints as they are become tree errors in ``routes/responses.py``.

An error's ``message`` is what the client reads; ``str()`` is what a log reads, the same text unless
a backend's own words were kept as the ``reason`` (an internal failure tells the client no more).

One renderer per dialect turns an error into the body that surface's clients parse:

* ``native`` (``/api/*`` and ``/``): ``{"error": "<message>"}`` like Ollama itself;
* ``openai`` (``/v1/*``): ``{"error": {"message", "type", "param", "code"}}``;
* ``anthropic`` (``/v1/messages``): ``{"type": "error", "error": {"type", "message"}}``.

``routes/responses.py`` sends it as a whole response; ``render_in_stream`` ends a stream with it.
This module knows no web framework and no backend.
"""

from __future__ import annotations

import enum
import json
from typing import ClassVar


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

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, reason: str | None = None) -> None:
        super().__init__(message if reason is None else reason)
        self.message = message
        self.headers = headers or {}

    def native_fields(self) -> dict[str, str]:
        """Members the native body carries beside ``error`` (none, for most errors)."""
        return {}


class BadRequest(GatewayError):
    status = 400
    outcome = "bad_request"
    code = "bad_request"
    openai_type = anthropic_type = "invalid_request_error"


class InvalidPath(BadRequest):
    code = "invalid_path"


class Unauthorized(GatewayError):
    """No usable credential. The client always gets the same message; ``auth`` (``missing``,
    ``malformed``, ``unknown``, ``wrong_secret``, ``expired``, ``revoked``, ``bad_signature``,
    ``unknown_public_key``, ``stale_timestamp``), the key id and the public key's fingerprint, when
    they could be read, are for the operator's log only. ``signin_url`` (an unknown public key:
    where to ask for access) is what the ollama command looks for in a 401's body."""

    status = 401
    outcome = "unauthorized"
    code = "invalid_api_key"
    openai_type = "invalid_request_error"
    anthropic_type = "authentication_error"

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        auth: str = "missing",
        key_id: str | None = None,
        public_key: str | None = None,
        signin_url: str | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.auth = auth
        self.key_id = key_id
        self.public_key = public_key
        self.signin_url = signin_url

    def native_fields(self) -> dict[str, str]:
        return {"signin_url": self.signin_url} if self.signin_url else {}


class Forbidden(GatewayError):
    status = 403
    outcome = "forbidden"
    code = "permission_denied"
    openai_type = anthropic_type = "permission_error"


class NotFound(GatewayError):
    status = 404
    outcome = "not_found"
    code = "not_found"
    openai_type = anthropic_type = "not_found_error"


class ModelNotFound(NotFound):
    """No server of the fleet has the model (Ollama's own words for it)."""

    code = "model_not_found"


class Conflict(GatewayError):
    """A key management request the store refuses (a name taken, no id left to draw)."""

    status = 409
    outcome = "conflict"
    code = "conflict"


class BodyTooLarge(GatewayError):
    status = 413
    outcome = "body_too_large"
    code = "request_too_large"
    openai_type = anthropic_type = "invalid_request_error"


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


class InternalError(GatewayError):
    """A failure nobody foresaw. The client reads ``answer`` and no more; the reason given (its
    ``str()``) keeps what happened, for the log."""

    status = 500
    outcome = "error"
    code = "internal_error"
    answer: ClassVar[str] = "internal error"

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(self.answer, reason=reason)


class DatabaseFailed(InternalError):
    """SQLite failed in a way waiting will not mend (a file that is not a database, a malformed
    image); its reason is SQLite's own words."""


class DatabaseUnavailable(DatabaseFailed):
    """The database cannot be used just now: locked past the busy timeout, read-only, full, its
    file gone."""

    status = 503
    outcome = "unavailable"
    code = "database_unavailable"
    answer = "database unavailable, try again later"


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
    """The shared limit store (Redis) cannot be reached. The client gets this 503 when the gateway
    is configured to fail closed; otherwise the limiter serves on in-process limits meanwhile."""

    status = 503
    code = "limiter_unavailable"
    anthropic_type = "overloaded_error"


def render(error: GatewayError, dialect: Dialect, request_id: str = "") -> bytes:
    """The whole response body for ``error`` in ``dialect`` (sent with application/json)."""
    if dialect is Dialect.NATIVE:
        body: object = {"error": error.message, **error.native_fields()}
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
