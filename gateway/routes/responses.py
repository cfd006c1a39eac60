"""How a ``GatewayError`` becomes a whole HTTP response: ``ErrorResponse``, and the exception
handlers every FastAPI app of the gateway installs (its own endpoints, the admin API).

``ErrorResponse`` is a starlette ``Response``, so itself an ASGI app: a pure-ASGI layer awaits it
with its scope, receive and send, and a FastAPI exception handler returns it. Every refusal the
gateway writes before a response has started goes out through it, so its framing is the same on
every surface. (After the start, a stream ends with ``errors.render_in_stream`` instead.)

It knows the errors, their dialects and the framework; not who refused, nor why.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway.errors import BadRequest, Conflict, Dialect, GatewayError, InternalError, NotFound, render
from gateway.keys.management import InvalidKeyRequest, UnknownKey
from gateway.keys.store import KeyStoreError
from gateway.proxy.headers import Headers
from gateway.usage.report import InvalidUsageQuery


class ErrorResponse(Response):
    """``error`` in ``dialect``; its headers are the JSON framing, then ``headers`` (what the
    exchange carries anyway: request id, CORS, rate-limit state, ...), then the error's own
    (``Retry-After``, ``WWW-Authenticate``)."""

    media_type = "application/json"

    def __init__(
        self,
        error: GatewayError,
        dialect: Dialect = Dialect.NATIVE,
        *,
        request_id: str = "",
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        self.status_code = error.status
        self.background = None
        self.body = body = render(error, dialect, request_id)
        self.raw_headers: Headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
            *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
        ]


def install_error_handlers(app: FastAPI) -> None:
    """Every failure a FastAPI app meets, answered in the ``/api`` dialect: the gateway's own
    errors as they are, the key and usage refusals the CLI shares translated, and the framework's."""

    @app.exception_handler(GatewayError)
    async def refused(_: Request, error: GatewayError) -> Response:
        if isinstance(error, InternalError):
            # Not a refusal but a failure: the app's last resort (if any) logs it with its traceback.
            raise error
        return ErrorResponse(error)

    @app.exception_handler(KeyStoreError)
    async def key_refused(_: Request, error: KeyStoreError) -> Response:
        return ErrorResponse(_translated(error))

    @app.exception_handler(InvalidUsageQuery)
    async def usage_refused(_: Request, error: InvalidUsageQuery) -> Response:
        return ErrorResponse(_translated(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> Response:
        # Not FastAPI's 422 with the offending input echoed back: a 400 naming the field.
        return ErrorResponse(BadRequest(_validation_message(error)))

    @app.exception_handler(HTTPException)
    async def framework(_: Request, error: HTTPException) -> Response:
        # Starlette's own refusals (no such route, a method the route does not take), in our words.
        answer = GatewayError(str(error.detail).lower(), headers=dict(error.headers or {}))
        answer.status = error.status_code
        return ErrorResponse(answer)


def _translated(error: KeyStoreError | InvalidUsageQuery) -> GatewayError:
    if isinstance(error, (InvalidKeyRequest, InvalidUsageQuery)):
        return BadRequest(str(error))
    if isinstance(error, UnknownKey):
        return NotFound(str(error))
    # DuplicateKey, or another refusal of the key store (a name taken in a race, no id left to draw).
    return Conflict(str(error))


def _validation_message(error: RequestValidationError) -> str:
    first = error.errors()[0] if error.errors() else {}
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = str(first.get("msg", "invalid request")).lower()
    return f"{where}: {message}" if where else message
