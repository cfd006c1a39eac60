"""The admin API's OpenAPI description as the API really answers.

FastAPI documents a 422 with its own error shape; this API answers invalid input with a 400 in the
``/api`` dialect, like every other refusal, so each operation lists the statuses it can return
with the one error shape.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
    "additionalProperties": False,
}
_ALWAYS = {
    "401": "No key, or not a valid one",
    "403": "The key lacks the admin scope",
    "413": "The request body is larger than 64 KiB",
    "429": "Too many failed attempts from this address",
    "500": "An unexpected failure (logged with its traceback)",
    "503": "The database cannot be used just now (locked, read-only)",
}
_WITH_INPUT = {"400": "An impossible value (the CLI's rules and messages)"}
_ON_A_KEY = {"404": "No key with that id"}
_ON_CREATE = {"409": "A key with that name exists"}
_ON_A_USABLE_KEY = {"409": "The key is revoked (or, to rotate it, expired)"}


def described(schema: dict[str, Any]) -> dict[str, Any]:
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Error"] = _ERROR
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            had_input = responses.pop("422", None) is not None
            errors = {**_ALWAYS, **(_WITH_INPUT if had_input else {})}
            if "{key_id}" in path:
                errors |= _ON_A_KEY
            if method == "post" and path.endswith("/keys"):
                errors |= _ON_CREATE
            if (method, path.rsplit("/", 1)[-1]) in (("patch", "{key_id}"), ("post", "rotate")):
                errors |= _ON_A_USABLE_KEY
            for status, description in sorted(errors.items()):
                responses[status] = {
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
    return schema
