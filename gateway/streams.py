"""Passive readers over copies of relayed bytes: token usage and in-stream errors.

Per chunk the reader does a few C-level byte operations (count frames, keep a bounded tail); it
never parses JSON on the hot path and never holds a byte back. At the end it reads the counts from
the tail: Ollama writes them last (``prompt_eval_count``/``eval_count`` after ``context`` in the final
NDJSON object; ``usage`` after ``choices`` in OpenAI bodies and the closing SSE chunk), and the last
occurrence wins (``/v1/completions`` streams repeat zero usage on every chunk). A key inside a JSON
string is escaped (``\\"eval_count\\"``), so the patterns below cannot be fooled by generated text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TAIL = 8192
_NATIVE_PROMPT = re.compile(rb'(?<!\\)"prompt_eval_count":\s*(\d+)')
_NATIVE_COMPLETION = re.compile(rb'(?<!\\)"eval_count":\s*(\d+)')
_OPENAI_PROMPT = re.compile(rb'(?<!\\)"prompt_tokens":\s*(\d+)')
_OPENAI_COMPLETION = re.compile(rb'(?<!\\)"completion_tokens":\s*(\d+)')
_NATIVE_DONE = re.compile(rb'(?<!\\)"done":\s*true')
_NATIVE_ERROR = re.compile(rb'(?:^|\n)\{"error":')
_SSE_ERROR = re.compile(rb'(?:^|\n)data: \{"error":')
_SSE_DONE = b"data: [DONE]"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # True when the counts are the upstream's own; False when estimated from relayed chunks.
    exact: bool
    # The stream carried an error frame (Ollama's own, or the gateway's after a broken upstream).
    error: bool = False

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageReader:
    """Reads one response body; ``result()`` at the end."""

    def __init__(self, content_type: bytes | None) -> None:
        kind = (content_type or b"").split(b";", 1)[0].strip().lower()
        self._sse = kind == b"text/event-stream"
        self._ndjson = kind == b"application/x-ndjson"
        self._separator = b"\n\n" if self._sse else b"\n"
        self._tail = b""
        self._frames = 0

    def feed(self, data: bytes) -> None:
        self._frames += data.count(self._separator)
        tail = self._tail + data
        self._tail = tail[-_TAIL:] if len(tail) > _TAIL else tail

    def result(self) -> Usage:
        tail = self._tail
        if self._sse:
            error = bool(_SSE_ERROR.search(tail))
            if _OPENAI_COMPLETION.search(tail):
                return self._counted(_OPENAI_PROMPT, _OPENAI_COMPLETION, error)
            # No usage chunk (not requested, or cut short): every event but [DONE] and the finish
            # chunk carried a token.
            extra = (_SSE_DONE in tail) + (b'"finish_reason":"' in tail) + error
            return Usage(0, max(self._frames - extra, 0), exact=False, error=error)
        error = bool(_NATIVE_ERROR.search(tail))
        openai = bool(_OPENAI_COMPLETION.search(tail) or _OPENAI_PROMPT.search(tail))
        patterns = (_OPENAI_PROMPT, _OPENAI_COMPLETION) if openai else (_NATIVE_PROMPT, _NATIVE_COMPLETION)
        if not self._ndjson or _NATIVE_DONE.search(tail):
            # One JSON object (missing counts mean 0), or a native stream that reached done:true.
            return self._counted(*patterns, error)
        return Usage(0, max(self._frames - error, 0), exact=False, error=error)

    def _counted(self, prompt: re.Pattern[bytes], completion: re.Pattern[bytes], error: bool) -> Usage:
        prompts = prompt.findall(self._tail)
        completions = completion.findall(self._tail)
        return Usage(
            int(prompts[-1]) if prompts else 0,
            int(completions[-1]) if completions else 0,
            exact=True,
            error=error,
        )
