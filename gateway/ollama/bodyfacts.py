"""What the gateway reads of a JSON request body, read as Ollama's decoder reads it (``JsonBody``)
and kept small whatever the body's size, so that it can come back from another process cheaply.

The policies read only this: the model names (permissions, routing), ``stream`` and whether the
client asked for usage (routing, the usage rewrite), and the token estimate's two parts. A field
they do not read is not here; asking for a name that is not is a bug, and raises ``KeyError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.errors import BadRequest
from gateway.ollama.estimate import completion_cap, prompt_tokens
from gateway.ollama.jsonbody import JsonBody

# Fields read as model names (or, for "from", a model name or a path on the server).
NAME_FIELDS = ("model", "name", "source", "destination", "from")
# A model name is at most 350 characters; a longer one is invalid however much longer it is, so
# only this much of it comes back (messages quote 200 characters at most).
_NAME_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class BodyFacts:
    names: dict[str, str]  # the string Go would decode, for each name field present
    not_strings: frozenset[str]  # name fields with a value that is not a string (Ollama refuses)
    stream: bool | None  # the last ``stream`` value, when it is a boolean
    asks_usage: bool  # ``stream_options.include_usage`` is true
    prompt_tokens: int
    completion_cap: int | None  # the client's own cap on completion tokens
    has_members: bool  # the object is not empty

    @classmethod
    def read(cls, raw: bytes) -> BodyFacts:
        """Parse ``raw`` (``BadRequest`` for what Ollama would refuse to decode) and keep the facts."""
        body = JsonBody.parse(raw)
        names: dict[str, str] = {}
        not_strings: set[str] = set()
        for field in NAME_FIELDS:
            values = body.values(field)
            if not values:
                continue
            if all(isinstance(value, str) for value in values):
                names[field] = values[-1][:_NAME_LIMIT]
            else:
                not_strings.add(field)
        stream = body.get("stream")
        options = body.get("stream_options")
        return cls(
            names=names,
            not_strings=frozenset(not_strings),
            stream=stream if isinstance(stream, bool) else None,
            asks_usage=isinstance(options, dict) and options.get("include_usage") is True,
            prompt_tokens=prompt_tokens(body),
            completion_cap=completion_cap(body),
            has_members=bool(body.pairs),
        )

    def string(self, field: str) -> str | None:
        """The string Go would decode for a name field; any other value makes Ollama refuse the
        body, so 400."""
        if field not in NAME_FIELDS:
            raise KeyError(field)
        if field in self.not_strings:
            raise BadRequest(f"'{field}' must be a string")
        return self.names.get(field)


def with_member(raw: bytes, facts: BodyFacts, name: str, value: Any) -> bytes:
    """``raw`` with one member appended to its top-level object: the last of several spellings is
    the one Go keeps (and a struct it decodes into takes the fields of both), so the client's own
    members stay byte for byte as they came, whatever their spelling or duplicates."""
    # The last "}" closes the object (only whitespace may follow); views: the body is copied once.
    end = raw.rindex(b"}")
    member = b'%s"%s":%s' % (b"," if facts.has_members else b"", name.encode(), _encoded(value))
    whole = memoryview(raw)
    return b"".join((whole[:end], member, whole[end:]))


def _encoded(value: Any) -> bytes:
    # ASCII escapes: a lone surrogate is written as the escape Go reads, never encoded as UTF-8.
    return json.dumps(value, separators=(",", ":")).encode()
