"""Passive readers over copies of relayed bytes: token usage and in-stream errors.

Per chunk the reader does C-level byte operations only (count frame separators, look for a few
literal markers, run one regex where a marker is present); it never decodes text, never parses
JSON and never holds a byte back. Nothing is assumed about where chunks split: a small carry of
the previous chunk lets a key, a number or a separator straddle two chunks.

Where the counts are:

* native NDJSON streams: ``prompt_eval_count``/``eval_count`` on the final ``done:true`` line;
* native single objects (``stream:false``, ``/api/embed``): the same keys, anywhere in the body
  (``context`` comes before them and ``logprobs`` after them, both possibly very long);
* OpenAI bodies and SSE streams: ``usage`` (``prompt_tokens``/``completion_tokens``, or
  ``input_tokens``/``output_tokens`` on ``/v1/responses`` and ``/v1/messages``); the last
  occurrence wins, because ``/v1/completions`` streams repeat a zero ``usage`` on every chunk.

A key inside a JSON string is escaped (``\\"eval_count\\"``): the pattern wants both of its quotes
bare, so generated text cannot pose as a count (no lookbehind is needed for the opening one, and
none is written: it would cost the search its literal prefix, 3x slower). A stream that was cut
short is estimated from its frames: one frame, one token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# More than a count (key, separator, digits) can span, so one that straddles two chunks is found.
_CARRY = 64
_COUNT = re.compile(
    rb'"(prompt_eval_count|eval_count|prompt_tokens|completion_tokens|input_tokens|output_tokens)":\s*'
    # The lookahead keeps a number cut by a chunk boundary from being read before it is whole.
    rb"(\d+)(?=\D)"
)
_PROMPT_KEYS = frozenset({b"prompt_eval_count", b"prompt_tokens", b"input_tokens"})
# Line-start patterns anchor on "\n" only: a window may begin mid-line, so the reader puts a
# virtual newline before the body instead of trusting "^".
_NDJSON_ERROR = re.compile(rb'\n\{"error":')
# An OpenAI error event, a failed /v1/responses stream, or an Anthropic error event.
_SSE_ERROR = re.compile(rb'\n(?:data: \{"error":|event: (?:error|response\.failed)\n)')
# How each SSE dialect closes a complete stream: chat/completions, responses, messages.
_SSE_END = re.compile(rb"\n(?:data: \[DONE\]|event: (?:response\.completed|message_stop)\n)")


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # True when the counts are the upstream's own; False when estimated from relayed chunks.
    exact: bool
    # The stream did not end the way a complete one does: it carried an error frame, or it
    # stopped before its closing frame (done:true, [DONE], ...).
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
        self._size = 0
        self._carry = b"\n"  # the virtual newline before the body (at offset -1)
        self._frames = 0
        # Latest (offset, value) of each count, and offsets of the other facts (-1: not seen).
        self._prompt = (-1, 0)
        self._completion = (-1, 0)
        self._done_at = -1
        self._not_done_at = -1
        self._error_at = -1
        self._end_at = -1
        self._finished = False  # an OpenAI chunk carried a finish_reason
        # The two last newlines, to find where the last NDJSON line starts.
        self._newline = -1
        self._newline_before = -1

    def feed(self, data: bytes) -> None:
        # One call per piece, the markers inline: at tens of streams each piece arrives alone, on
        # cold caches, and every call on its way costs more than the searches themselves. find(),
        # not "in": bytes.__contains__ first tries its argument as an integer, and builds (then
        # drops) a TypeError for every search (CPython 3.11: twice the cost of the search).
        if not data:
            return
        carry = self._carry
        base = self._size - len(carry)  # offset of window[0] in the body
        window = carry + data
        find = window.find
        if find(b'_count"') >= 0 or find(b'_tokens"') >= 0:  # _COUNT's keys all end so
            for match in _COUNT.finditer(window):
                seen = (base + match.start(), int(match.group(2)))
                if match.group(1) in _PROMPT_KEYS:
                    self._prompt = max(self._prompt, seen)
                else:
                    self._completion = max(self._completion, seen)
        if self._sse:
            # An event separator may straddle the chunks: count from one byte back.
            self._frames += window.count(b"\n\n", len(carry) - 1)
            event = find(b"event: ") >= 0
            if event or find(b"data: [DONE]") >= 0:
                for match in _SSE_END.finditer(window):
                    self._end_at = max(self._end_at, base + match.start())
            if event or find(b'{"error":') >= 0:
                for match in _SSE_ERROR.finditer(window):
                    self._error_at = max(self._error_at, base + match.start())
            if not self._finished:
                self._finished = find(b'"finish_reason":"') >= 0
        else:
            self._frames += data.count(b"\n")
            # Plain searches suffice: inside a JSON string the quotes would be escaped (\"done\":).
            done = window.rfind(b'"done":true')
            if done >= 0 and base + done > self._done_at:
                self._done_at = base + done
            not_done = window.rfind(b'"done":false')
            if not_done >= 0 and base + not_done > self._not_done_at:
                self._not_done_at = base + not_done
            if find(b'{"error":') >= 0:
                for match in _NDJSON_ERROR.finditer(window):
                    self._error_at = max(self._error_at, base + match.start() + 1)
            last = data.rfind(b"\n")
            if last >= 0:
                before = data.rfind(b"\n", 0, last)
                self._newline_before = self._size + before if before >= 0 else self._newline
                self._newline = self._size + last
        self._size += len(data)
        self._carry = window[-_CARRY:]

    def result(self) -> Usage:
        if self._sse:
            return self._sse_result()
        if self._ndjson:
            return self._ndjson_result()
        # One JSON object: missing counts mean 0 (Ollama omits zero metrics).
        return Usage(self._prompt[1], self._completion[1], exact=True)

    def _ndjson_result(self) -> Usage:
        # Only the last line speaks for the whole stream, and only once it is complete. Tool-call
        # arguments are unescaped JSON objects and may hold a "done" key; the line's own "done" is
        # false on every chunk but the last, so one false anywhere on the line rules it out.
        complete = self._newline == self._size - 1
        line = self._newline_before + 1
        error = complete and self._error_at >= line
        if complete and not error and self._done_at >= line > self._not_done_at:
            prompt = self._prompt[1] if self._prompt[0] >= line else 0
            completion = self._completion[1] if self._completion[0] >= line else 0
            return Usage(prompt, completion, exact=True)
        # Cut short: every complete line but an error line carried one token.
        return Usage(0, max(self._frames - error, 0), exact=False, error=True)

    def _sse_result(self) -> Usage:
        ended = self._end_at >= 0
        error = self._error_at >= 0
        if ended and not error and self._completion[0] >= 0:
            return Usage(self._prompt[1], self._completion[1], exact=True)
        # No usage chunk (not requested, or cut short): every event but [DONE], the finish chunk
        # and an error event carried a token.
        extra = ended + self._finished + error
        return Usage(0, max(self._frames - extra, 0), exact=False, error=error or not ended)
