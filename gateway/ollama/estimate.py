"""How many tokens a request may use, reserved before it is forwarded.

Completion: the client's own cap (``options.num_predict`` natively; ``max_tokens``,
``max_completion_tokens`` or ``max_output_tokens`` on /v1), else the configured default. Prompt:
about four characters a token over the text the request carries (images are not counted: Ollama
does not report them as prompt tokens either). The reservation is trued up to the upstream's real
counts when the response ends.
"""

from __future__ import annotations

from typing import Any

from gateway.ollama.jsonbody import JsonBody

_CHARS_PER_TOKEN = 4
_PER_MESSAGE = 4
_TEXT_FIELDS = ("prompt", "system", "suffix", "input", "instructions")
_COMPLETION_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _text_length(value: Any) -> int:
    # With a stack of its own, not recursion: a body nested as deep as the parser allows must
    # cost a loop, never a RecursionError (a 500 raised before any limit applied).
    length = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            length += len(item)
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            if item.get("type") in ("text", "input_text"):
                pending.append(item.get("text"))
            pending.append(item.get("content"))
    return length


def prompt_tokens(body: JsonBody) -> int:
    characters = 0
    for name in _TEXT_FIELDS:
        value = body.get(name)
        if value is not None:
            characters += _text_length(value)
    messages = body.get("messages")
    count = 0
    if isinstance(messages, list):
        count = len(messages)
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            # Plain string content is the common case; parts (text, images) take the long way.
            characters += len(content) if isinstance(content, str) else _text_length(message)
    return characters // _CHARS_PER_TOKEN + count * _PER_MESSAGE + 1


def completion_cap(body: JsonBody) -> int | None:
    """The client's own cap on completion tokens, if it set one."""
    for name in _COMPLETION_CAPS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    options = body.get("options")
    if isinstance(options, dict):
        value = options.get("num_predict")
        # Ollama: -1 = no limit, -2 = fill the context; both fall back to the default.
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def estimate(prompt: int, cap: int | None, default_completion: int, embedding: bool) -> int:
    """Tokens to reserve: the prompt's, and the completion's cap (none for an embedding)."""
    return prompt + (0 if embedding else cap or default_completion)
