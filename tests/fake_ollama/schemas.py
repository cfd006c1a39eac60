"""The Go request structs the fake decodes into, and the two ways a decode error is sent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .exchange import Exchange, openai_error
from .godecode import DecodeError, EmptyBody, Field, decode
from .wire import JSON_UTF8, go_json

STRING = Field("string", "string")
BOOL = Field("bool", "bool")
INT = Field("number", "int")
ANY = Field("any", "interface {}")
OPTIONS = Field("object", "map[string]interface {}")
DURATION = Field("duration", "api.Duration")

_MESSAGE = {
    "role": STRING,
    "content": STRING,
    "thinking": STRING,
    "images": Field("array", "[]api.ImageData"),
    "tool_calls": Field("array", "[]api.ToolCall"),
    "tool_name": STRING,
    "tool_call_id": STRING,
}
_INFERENCE = {
    "model": STRING,
    "stream": BOOL,
    "format": ANY,
    "keep_alive": DURATION,
    "options": OPTIONS,
    "think": ANY,
    "truncate": BOOL,
    "shift": BOOL,
    "logprobs": BOOL,
    "top_logprobs": INT,
}
GENERATE = {
    **_INFERENCE,
    "prompt": STRING,
    "suffix": STRING,
    "system": STRING,
    "template": STRING,
    "context": Field("array", "[]int"),
    "raw": BOOL,
    "images": Field("array", "[]api.ImageData"),
}
CHAT = {
    **_INFERENCE,
    "messages": Field("array", "[]api.Message", _MESSAGE),
    "tools": Field("array", "api.Tools"),
}
EMBED = {
    "model": STRING,
    "input": ANY,
    "keep_alive": DURATION,
    "truncate": BOOL,
    "dimensions": INT,
    "options": OPTIONS,
}
EMBEDDINGS = {"model": STRING, "prompt": STRING, "keep_alive": DURATION, "options": OPTIONS}
SHOW = {"model": STRING, "name": STRING, "system": STRING, "template": STRING, "verbose": BOOL, "options": OPTIONS}
TRANSFER = {"model": STRING, "name": STRING, "insecure": BOOL, "stream": BOOL}
CREATE = {
    "model": STRING,
    "name": STRING,
    "stream": BOOL,
    "from": STRING,
    "files": Field("object", "map[string]string"),
    "adapters": Field("object", "map[string]string"),
    "template": STRING,
    "system": STRING,
    "parameters": OPTIONS,
    "messages": Field("array", "[]api.Message", _MESSAGE),
    "quantize": STRING,
}
COPY = {"source": STRING, "destination": STRING}
DELETE = {"model": STRING, "name": STRING}

_STREAM_OPTIONS = Field("object", "openai.StreamOptions", {"include_usage": BOOL})
OPENAI_CHAT = {
    "model": STRING,
    "messages": Field("array", "[]openai.Message", {"role": STRING, "content": ANY, "reasoning": STRING}),
    "stream": BOOL,
    "stream_options": _STREAM_OPTIONS,
    "max_tokens": INT,
    "reasoning_effort": STRING,
    "tools": Field("array", "[]api.Tool"),
}
OPENAI_COMPLETION = {
    "model": STRING,
    "prompt": STRING,
    "stream": BOOL,
    "stream_options": _STREAM_OPTIONS,
    "max_tokens": INT,
    "suffix": STRING,
}
OPENAI_EMBED = {"input": ANY, "model": STRING, "dimensions": INT, "encoding_format": STRING}


async def native_request(ex: Exchange, go_type: str, fields: Mapping[str, Field]) -> dict[str, Any] | None:
    """Decode like a native handler; on failure answer 400 and return None."""
    try:
        return decode(ex.body, go_type, fields)
    except EmptyBody:
        message = "missing request body"
    except DecodeError as err:
        message = str(err)
    await ex.respond_json(400, {"error": message})
    return None


async def openai_request(ex: Exchange, go_type: str, fields: Mapping[str, Field]) -> dict[str, Any] | None:
    """Decode like a /v1 middleware; its own 400s are c.JSON (charset, no newline)."""
    try:
        return decode(ex.body, go_type, fields)
    except DecodeError as err:
        await openai_invalid(ex, str(err))
        return None


async def openai_invalid(ex: Exchange, message: str) -> None:
    await ex.respond(400, go_json(openai_error(400, message)), JSON_UTF8)
