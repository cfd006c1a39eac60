"""Stamped stream records: every token chunk carries its sequence number and its send time.

The fast upstream writes them and the load side reads them back, so a chunk's relay delay is its
receive time minus its send time. Both sides use ``time.monotonic_ns()``, one clock for every
process on the machine. The records keep Ollama's shapes (wire facts §3.1 and §5.3), so a gateway
that reads streams for usage accounting does its real work on them.
"""

from __future__ import annotations

import enum


class Format(enum.Enum):
    NDJSON = "ndjson"  # POST /api/chat
    SSE = "sse"  # POST /v1/chat/completions


PROMPT_TOKENS = 8

_NDJSON_TOKEN = (
    b'{"model":"bench","created_at":"2026-01-01T00:00:00.000000001Z",'
    b'"message":{"role":"assistant","content":"%d %d "},"done":false}\n'
)
_NDJSON_END = (
    b'{"model":"bench","created_at":"2026-01-01T00:00:00.000000001Z",'
    b'"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
    b'"total_duration":%d,"load_duration":1000000,"prompt_eval_count":%d,'
    b'"prompt_eval_duration":1000000,"eval_count":%d,"eval_duration":%d}\n'
)
_SSE_HEAD = (
    b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1767225600,'
    b'"model":"bench","system_fingerprint":"fp_ollama","choices":'
)
_SSE_FIRST = _SSE_HEAD + b'[{"index":0,"delta":{"role":"assistant","content":"%d %d "},"finish_reason":null}]}\n\n'
_SSE_TOKEN = _SSE_HEAD + b'[{"index":0,"delta":{"content":"%d %d "},"finish_reason":null}]}\n\n'
_SSE_FINISH = _SSE_HEAD + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
_SSE_USAGE = _SSE_HEAD + b'[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'
_SSE_DONE = b"data: [DONE]\n\n"

_CONTENT = b'"content":"'
_ERROR = b'"error"'


def token(fmt: Format, seq: int, sent_ns: int) -> bytes:
    """One token record; its text is "<seq> <send time in ns> "."""
    if fmt is Format.NDJSON:
        return _NDJSON_TOKEN % (seq, sent_ns)
    return (_SSE_FIRST if seq == 0 else _SSE_TOKEN) % (seq, sent_ns)


def ending(fmt: Format, tokens: int, elapsed_ns: int, usage: bool) -> list[bytes]:
    """The records after the last token: Ollama's final chunk, or finish, usage and [DONE]."""
    if fmt is Format.NDJSON:
        return [_NDJSON_END % (elapsed_ns, PROMPT_TOKENS, tokens, elapsed_ns)]
    records = [_SSE_FINISH]
    if usage:
        records.append(_SSE_USAGE % (PROMPT_TOKENS, tokens, PROMPT_TOKENS + tokens))
    records.append(_SSE_DONE)
    return records


class StampReader:
    """Splits a relayed body into records and keeps each token's relay delay.

    Reads may split or merge records anywhere, so partial records wait for the rest. Every
    record in one read gets that read's arrival time: that is when the bytes became visible.
    """

    __slots__ = (
        "_pending",
        "_separator",
        "_sse",
        "delays_ns",
        "ended",
        "errors",
        "first_ns",
        "last",
        "next_seq",
        "out_of_order",
        "sent_ns",
        "seqs",
    )

    def __init__(self, fmt: Format) -> None:
        self._sse = fmt is Format.SSE
        self._separator = b"\n\n" if self._sse else b"\n"
        self._pending = b""
        self.delays_ns: list[int] = []
        self.sent_ns: list[int] = []  # the upstream's send time of each token, same order
        self.seqs: list[int] = []  # each token's sequence number, in arrival order
        self.first_ns = 0  # arrival of the first token record; 0 until then
        self.next_seq = 0
        self.out_of_order = 0
        self.errors = 0
        self.ended = False  # the stream's terminal record arrived
        self.last = b""  # the last whole record, without its separator

    @property
    def partial(self) -> bool:
        """Bytes of a record whose end never came."""
        return bool(self._pending)

    @property
    def tokens(self) -> int:
        return len(self.delays_ns)

    def feed(self, data: bytes, received_ns: int) -> None:
        if self._pending:
            data = self._pending + data
        records = data.split(self._separator)
        self._pending = records.pop()
        for record in records:
            self._record(record, received_ns)

    def _record(self, record: bytes, received_ns: int) -> None:
        self.last = record
        start = record.find(_CONTENT)
        if start >= 0:
            start += len(_CONTENT)
            fields = record[start : record.find(b'"', start)].split()
            if len(fields) == 2:
                seq = int(fields[0])
                if seq != self.next_seq:
                    self.out_of_order += 1
                self.next_seq = seq + 1
                self.seqs.append(seq)
                sent = int(fields[1])
                self.sent_ns.append(sent)
                self.delays_ns.append(received_ns - sent)
                if not self.first_ns:
                    self.first_ns = received_ns
                return
        if _ERROR in record:
            self.errors += 1
        elif (record == b"data: [DONE]") if self._sse else (b'"done":true' in record):
            self.ended = True
