"""The admin API's failures, rendered in the ``/api`` dialect: ``{"error": "<message>"}``.

The key operations raise the same errors for the CLI and the API; here each gets its status.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from gateway.errors import BadRequest, Dialect, GatewayError, NotFound, render
from gateway.keys.management import InvalidKeyRequest, UnknownKey
from gateway.keys.store import KeyStoreError
from gateway.usage.report import InvalidUsageQuery


class Conflict(GatewayError):
    status = 409
    outcome = "conflict"
    code = "conflict"


def _native(error: GatewayError) -> Response:
    return Response(render(error, Dialect.NATIVE), error.status, error.headers, "application/json")


def _translated(error: Exception) -> GatewayError:
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, error: GatewayError) -> Response:
        return _native(error)

    @app.exception_handler(KeyStoreError)
    async def key_error(_: Request, error: KeyStoreError) -> Response:
        return _native(_translated(error))

    @app.exception_handler(InvalidUsageQuery)
    async def usage_error(_: Request, error: InvalidUsageQuery) -> Response:
        return _native(_translated(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> Response:
        # Not FastAPI's 422 with the offending input echoed back: a 400 naming the field.
        return _native(BadRequest(_validation_message(error)))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> Response:
        response = _native(GatewayError(str(error.detail).lower()))
        response.status_code = error.status_code
        if error.headers:
            response.headers.update(error.headers)
        return response
