"""UsageReader on exact wire bytes, however the relay happens to chunk them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.ollama.streams import Usage, UsageReader

NDJSON = b"application/x-ndjson"
JSON = b"application/json; charset=utf-8"
SSE = b"text/event-stream"


def chunkings(body: bytes, stride: int = 1) -> Iterator[list[bytes]]:
    """The body whole, byte by byte, and cut in two at every ``stride``-th position."""
    yield [body]
    yield [body[i : i + 1] for i in range(len(body))]
    for cut in range(1, len(body), stride):
        yield [body[:cut], body[cut:]]


def read(content_type: bytes | None, chunks: list[bytes]) -> Usage:
    reader = UsageReader(content_type)
    for chunk in chunks:
        reader.feed(chunk)
    return reader.result()


def check(content_type: bytes | None, body: bytes, expected: Usage, stride: int = 1) -> None:
    for chunks in chunkings(body, stride):
        assert read(content_type, chunks) == expected, [len(chunk) for chunk in chunks]


GENERATE_STREAM = (
    b'{"model":"llama3.2","created_at":"2026-08-21T10:15:30.1012Z","response":"Th\xc3\xa9","done":false}\n'
    b'{"model":"llama3.2","created_at":"2026-08-21T10:15:30.1187Z",'
    b'"response":" \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82","done":false}\n'
    b'{"model":"llama3.2","created_at":"2026-08-21T10:15:30.1355Z","response":"","done":true,"done_reason":"stop",'
    b'"context":[128006,882,271],"total_duration":912345678,"load_duration":40123456,"prompt_eval_count":26,'
    b'"prompt_eval_duration":51234567,"eval_count":2,"eval_duration":33456789}\n'
)


def test_native_generate_stream_is_counted_from_the_final_line() -> None:
    check(NDJSON, GENERATE_STREAM, Usage(26, 2, exact=True))


def test_a_long_context_before_the_counts_does_not_hide_them() -> None:
    context = b",".join(b"128%03d" % (i % 1000) for i in range(6000))  # ~42 KB of token ids
    body = (
        b'{"model":"llama3.2","created_at":"t","response":"a","done":false}\n'
        b'{"model":"llama3.2","created_at":"t","response":"","done":true,"done_reason":"stop","context":['
        + context
        + b'],"total_duration":9,"load_duration":1,"prompt_eval_count":4100,"prompt_eval_duration":5,'
        b'"eval_count":1,"eval_duration":3}\n'
    )
    check(NDJSON, body, Usage(4100, 1, exact=True), stride=997)


CHAT_STREAM = (
    b'{"model":"qwen3","created_at":"t","message":{"role":"assistant","content":"","thinking":"User wants"},'
    b'"done":false}\n'
    # Tool arguments are a JSON object on the native API: their keys are not escaped.
    b'{"model":"qwen3","created_at":"t","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_k2j4x9aa",'
    b'"function":{"index":0,"name":"count","arguments":{"eval_count":999,"prompt_eval_count":999,"done":true}}}]},'
    b'"done":false}\n'
    b'{"model":"qwen3","created_at":"t","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
    b'"total_duration":2000000000,"load_duration":1000000,"prompt_eval_count":120,"prompt_eval_duration":90000000,'
    b'"eval_count":40,"eval_duration":800000000}\n'
)


def test_native_chat_stream_ignores_lookalike_keys_in_earlier_lines() -> None:
    check(NDJSON, CHAT_STREAM, Usage(120, 40, exact=True))


def test_a_cut_stream_is_not_taken_as_done_because_of_a_tool_argument() -> None:
    cut = CHAT_STREAM[: CHAT_STREAM.rindex(b'{"model":"qwen3"')]
    check(NDJSON, cut, Usage(0, 2, exact=False, error=True))


def test_generated_text_cannot_pose_as_counts() -> None:
    body = (
        b'{"model":"m","created_at":"t","response":"{\\"eval_count\\":999,\\"done\\":true}\\n","done":false}\n'
        b'{"model":"m","created_at":"t","response":"","done":true,"done_reason":"stop","prompt_eval_count":3,'
        b'"eval_count":1}\n'
    )
    check(NDJSON, body, Usage(3, 1, exact=True))
    check(NDJSON, body[: body.index(b"\n") + 1], Usage(0, 1, exact=False, error=True))


def test_escaped_counts_after_the_real_ones_are_not_read() -> None:
    # The last count wins, so text quoting a count after the real ones must not be taken for one,
    # however the chunks fall (the backslash may end the previous chunk).
    body = (
        b'{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":1},'
        b'"choices":[{"message":{"content":"{\\"completion_tokens\\":999,\\"prompt_tokens\\":7}"}}]}'
    )
    check(JSON, body, Usage(3, 1, exact=True))
    sse = (
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1},"x":"\\"completion_tokens\\":9"}\n\n'
        b"data: [DONE]\n\n"
    )
    check(SSE, sse, Usage(3, 1, exact=True))


def test_missing_counts_on_the_final_line_mean_zero() -> None:
    # A fully cached prompt: prompt_eval_count is omitted (omit-if-zero).
    body = (
        b'{"model":"m","created_at":"t","response":"a","done":false}\n'
        b'{"model":"m","created_at":"t","response":"","done":true,"done_reason":"stop","total_duration":5,'
        b'"eval_count":1,"eval_duration":2}\n'
    )
    check(NDJSON, body, Usage(0, 1, exact=True))


def test_a_stream_cut_short_is_estimated_from_complete_lines() -> None:
    cut_mid_line = GENERATE_STREAM[: GENERATE_STREAM.index(b'"done":true') + 4]
    check(NDJSON, cut_mid_line, Usage(0, 2, exact=False, error=True))
    # The final line itself arrived only in part: its counts are not trusted.
    cut_in_final_line = GENERATE_STREAM[: GENERATE_STREAM.index(b',"eval_duration"')]
    check(NDJSON, cut_in_final_line, Usage(0, 2, exact=False, error=True))
    check(NDJSON, b"", Usage(0, 0, exact=False, error=True))


def test_ollamas_mid_stream_error_line() -> None:
    body = (
        b'{"model":"llama3.2","created_at":"t","response":"Hel","done":false}\n'
        b'{"model":"llama3.2","created_at":"t","response":"lo","done":false}\n'
        b'{"error":"an error was encountered while running the model: unexpected EOF"}\n'
    )
    check(NDJSON, body, Usage(0, 2, exact=False, error=True))


def test_non_streamed_generate_with_logprobs_after_the_counts() -> None:
    # GenerateResponse puts Metrics before tool_calls and logprobs, which can be long.
    logprobs = b",".join(b'{"token":"tok","logprob":-0.25,"bytes":[116,111,107]}' for _ in range(400))
    body = (
        b'{"model":"llama3.2","created_at":"t","response":"tok tok","done":true,"done_reason":"stop",'
        b'"context":[1,2,3],"total_duration":9,"load_duration":1,"prompt_eval_count":11,"prompt_eval_duration":2,'
        b'"eval_count":400,"eval_duration":3,"logprobs":[' + logprobs + b"]}"
    )
    check(JSON, body, Usage(11, 400, exact=True), stride=331)


def test_non_streamed_chat_and_embed() -> None:
    chat = (
        b'{"model":"llama3.2","created_at":"t","message":{"role":"assistant","content":"d\xc3\xa9j\xc3\xa0 vu"},'
        b'"done":true,"done_reason":"stop","total_duration":9,"load_duration":1,"prompt_eval_count":8,'
        b'"prompt_eval_duration":2,"eval_count":3,"eval_duration":3}'
    )
    check(JSON, chat, Usage(8, 3, exact=True))
    embed = (
        b'{"model":"all-minilm","embeddings":[[0.010071029,-0.0017594862,0.05007221]],"total_duration":14143917,'
        b'"load_duration":1019500,"prompt_eval_count":8}'
    )
    check(JSON, embed, Usage(8, 0, exact=True))
    check(JSON, b'{"embedding":[0.5,-0.25]}', Usage(0, 0, exact=True))


def test_an_error_answer_is_not_an_in_stream_error() -> None:
    check(JSON, b'{"error":"model \'nope\' not found"}', Usage(0, 0, exact=True))
    check(None, b"", Usage(0, 0, exact=True))


def test_openai_json_bodies() -> None:
    completion = (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1755770130,"model":"llama3.2",'
        b'"system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant",'
        b'"content":"\\"prompt_tokens\\":5"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}\n'
    )
    check(b"application/json", completion, Usage(12, 2, exact=True))
    embeddings = (
        b'{"object":"list","data":[{"object":"embedding","embedding":[0.1,0.2],"index":0}],"model":"all-minilm",'
        b'"usage":{"prompt_tokens":7,"total_tokens":7}}\n'
    )
    check(b"application/json", embeddings, Usage(7, 0, exact=True))


def _chat_chunk(delta: bytes, finish: bytes = b"null") -> bytes:
    return (
        b'data: {"id":"chatcmpl-412","object":"chat.completion.chunk","created":1755770130,"model":"llama3.2",'
        b'"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":' + delta + b',"finish_reason":'
        b"" + finish + b"}]}\n\n"
    )


SSE_CHAT = (
    _chat_chunk(b'{"role":"assistant","content":"H\xc3\xa9"}')
    + _chat_chunk(b'{"content":"llo \xf0\x9f\x99\x82"}')
    + _chat_chunk(b"{}", b'"stop"')
)
USAGE_CHUNK = (
    b'data: {"id":"chatcmpl-412","object":"chat.completion.chunk","created":1755770130,"model":"llama3.2",'
    b'"system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,'
    b'"total_tokens":14}}\n\n'
)
DONE = b"data: [DONE]\n\n"


def test_sse_chat_with_include_usage() -> None:
    check(SSE, SSE_CHAT + USAGE_CHUNK + DONE, Usage(12, 2, exact=True))


def test_sse_chat_without_usage_is_estimated() -> None:
    check(SSE, SSE_CHAT + DONE, Usage(0, 2, exact=False))


def test_sse_chat_cut_or_failed() -> None:
    # Cut before the finish chunk: the relay ends the stream itself.
    check(SSE, SSE_CHAT[: SSE_CHAT.rindex(b"data: ")], Usage(0, 2, exact=False, error=True))
    # The gateway's (or an upstream's) error event.
    failed = SSE_CHAT[:100] + b'\n\ndata: {"error":{"message":"upstream connection lost","type":"api_error"}}\n\n'
    check(SSE, failed, Usage(0, 1, exact=False, error=True))
    # Ollama's own mid-stream failure on /v1: one blank chunk, then the body ends with no [DONE].
    blank = _chat_chunk(b'{"content":""}').replace(b'"model":"llama3.2"', b'"model":""')
    check(SSE, _chat_chunk(b'{"role":"assistant","content":"Hel"}') + blank, Usage(0, 2, exact=False, error=True))


def _completion_chunk(text: bytes, finish: bytes, usage: bool) -> bytes:
    zero = b',"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}' if usage else b""
    return (
        b'data: {"id":"cmpl-1","object":"text_completion","created":1755770130,"choices":[{"text":"%s","index":0,'
        b'"finish_reason":%s}],"model":"llama3.2","system_fingerprint":"fp_ollama"%s}\n\n' % (text, finish, zero)
    )


def test_v1_completions_streams() -> None:
    pieces = [_completion_chunk(b"tok%d " % i, b"null", usage=True) for i in range(3)]
    last = _completion_chunk(b"", b'"stop"', usage=True)
    final = (
        b'data: {"id":"cmpl-1","object":"text_completion","created":1755770130,"choices":[],"model":"llama3.2",'
        b'"system_fingerprint":"fp_ollama","usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n'
    )
    check(SSE, b"".join(pieces) + last + final + DONE, Usage(7, 3, exact=True), stride=7)
    # Cut short, the zero usage every chunk repeats is not taken for the answer.
    check(SSE, b"".join(pieces[:2]), Usage(0, 2, exact=False, error=True))
    plain = [_completion_chunk(b"tok%d " % i, b"null", usage=False) for i in range(3)]
    check(SSE, b"".join(plain) + _completion_chunk(b"", b'"stop"', usage=False) + DONE, Usage(0, 3, exact=False))


def test_v1_responses_and_messages_streams() -> None:
    responses = (
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":{"input_tokens":9,'
        b'"input_tokens_details":{"cached_tokens":0},"output_tokens":1,"total_tokens":10}}}\n\n'
    )
    check(SSE, responses, Usage(9, 1, exact=True))
    messages = (
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":12,'
        b'"output_tokens":0}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta",'
        b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"input_tokens":12,"output_tokens":5}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    check(SSE, messages, Usage(12, 5, exact=True))
    failed = responses.replace(b"event: response.completed", b"event: response.failed")
    assert read(SSE, [failed]).error


@pytest.mark.parametrize("content_type", [NDJSON, JSON, SSE])
def test_counts_split_inside_a_number(content_type: bytes) -> None:
    body = GENERATE_STREAM if content_type != SSE else SSE_CHAT + USAGE_CHUNK + DONE
    at = body.index(b'"eval_count":2' if content_type != SSE else b'"completion_tokens":2') + 14
    whole = read(content_type, [body])
    assert read(content_type, [body[:at], body[at:]]) == whole
    assert read(content_type, [body[:at], b"", body[at:]]) == whole
