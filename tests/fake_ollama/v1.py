"""The OpenAI-compatible routes, in the v0.32.6+ stream layout."""

from __future__ import annotations

import base64
import random
import struct
import time
from typing import Any

from .catalog import Catalog
from .embed import embed_inputs, find_embedder, vector
from .exchange import Exchange
from .generation import Clock, Outcome, Piece, Script, play, prepare, script, wait_whole
from .names import parse_name
from .native import resolve_think
from .schemas import OPENAI_CHAT, OPENAI_COMPLETION, OPENAI_EMBED, openai_invalid, openai_request
from .wire import JSON, SSE, SSE_DONE, go_json, go_quote, sse_event

FINGERPRINT = "fp_ollama"


def _usage(knobs: Any, generated: int) -> dict[str, int]:
    completion = generated if knobs.eval_count is None else knobs.eval_count
    prompt = knobs.prompt_eval_count
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _json(ex: Exchange, value: object) -> None:
    """/v1 bodies come from a json.Encoder: a trailing newline, no charset."""
    await ex.respond(200, go_json(value) + b"\n", JSON)


def _include_usage(request: dict[str, Any]) -> bool:
    options = request.get("stream_options") or {}
    return options.get("include_usage") is True


async def chat_completions(ex: Exchange, catalog: Catalog) -> None:
    request = await openai_request(ex, "openai.ChatCompletionRequest", OPENAI_CHAT)
    if request is None:
        return
    if not request.get("messages"):
        await openai_invalid(ex, "[] is too short - 'messages'")
        return
    raw = request.get("model") or ""
    if not raw:
        await ex.fail(400, "model is required")
        return
    name = parse_name(raw)
    if name is None:
        await ex.fail(400, "invalid model name")
        return
    model = catalog.find(name)
    if model is None:
        await ex.fail(404, f"model '{raw}' not found")
        return
    if "completion" not in model.capabilities:
        await ex.fail(400, f"{go_quote(raw)} does not support chat")
        return
    effort = request.get("reasoning_effort") or (request.get("reasoning") or {}).get("effort")
    think = resolve_think(model, raw, effort)
    if isinstance(think, str):
        await ex.fail(400, think)
        return
    clock = Clock()
    if not await prepare(ex, clock):
        return
    catalog.load(model, None)
    plan = script(ex.knobs, think=think, limit=request.get("max_tokens"))
    ident, created = f"chatcmpl-{random.randrange(999)}", int(time.time())
    if request.get("stream") is not True:
        outcome = await wait_whole(ex, plan)
        if outcome is Outcome.FAILED:
            await ex.fail(500, ex.knobs.stream_error)
            return
        if outcome is Outcome.DONE:
            message: dict[str, Any] = {"role": "assistant", "content": plan.content}
            if plan.thinking:
                message["reasoning"] = plan.thinking
            choice = {"index": 0, "message": message, "finish_reason": plan.done_reason}
            await _json(
                ex,
                {**_chunk_head(ident, "chat.completion", created, raw), "choices": [choice]}
                | {"usage": _usage(ex.knobs, len(plan.pieces))},
            )
        return
    await _stream_chat(ex, plan, ident, created, raw, _include_usage(request))


def _chunk_head(ident: str, kind: str, created: int, model: str) -> dict[str, Any]:
    return {"id": ident, "object": kind, "created": created, "model": model, "system_fingerprint": FINGERPRINT}


async def _stream_chat(ex: Exchange, plan: Script, ident: str, created: int, raw: str, usage: bool) -> None:
    def chunk(model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**_chunk_head(ident, "chat.completion.chunk", created, model), "choices": [choice]}

    async def emit(index: int, piece: Piece) -> bool:
        delta: dict[str, Any] = {"role": "assistant"} if index == 0 else {}
        delta["content"] = "" if piece.thinking else piece.text
        if piece.thinking:
            delta["reasoning"] = piece.text
        return await ex.write(sse_event(chunk(raw, delta, None)))

    ex.begin(200, SSE)
    outcome = await play(ex, plan, emit)
    if outcome is Outcome.ENDED:
        return
    if outcome is Outcome.FAILED:
        if ex.record.chunks_sent == 0:
            await ex.fail(500, ex.knobs.stream_error, from_stream=True)
            return
        # The native error line decodes as an empty response: one blank chunk, then the body ends.
        if await ex.write(sse_event(chunk("", {"content": ""}, None))):
            await ex.end()
        return
    tail = sse_event(chunk(raw, {}, plan.done_reason))
    if usage:
        tail += sse_event(
            {
                **_chunk_head(ident, "chat.completion.chunk", created, raw),
                "choices": [],
                "usage": _usage(ex.knobs, len(plan.pieces)),
            }
        )
    # Ollama writes the finish chunk, the usage chunk and [DONE] for one native line: one chunk here.
    if await ex.write(tail + SSE_DONE):
        await ex.end()


async def completions(ex: Exchange, catalog: Catalog) -> None:
    request = await openai_request(ex, "openai.CompletionRequest", OPENAI_COMPLETION)
    if request is None:
        return
    raw = request.get("model") or ""
    name = parse_name(raw)
    model = catalog.find(name) if name is not None else None
    if model is None:
        await ex.fail(404, f"model '{raw}' not found")
        return
    if "completion" not in model.capabilities:
        await ex.fail(400, f"{go_quote(raw)} does not support generate")
        return
    clock = Clock()
    if not await prepare(ex, clock):
        return
    catalog.load(model, None)
    if request.get("prompt"):
        plan = script(ex.knobs, think=False, limit=request.get("max_tokens"))
    else:
        plan = Script([], "load")  # an empty prompt only loads the model
    ident, created = f"cmpl-{random.randrange(999)}", int(time.time())
    if request.get("stream") is not True:
        outcome = await wait_whole(ex, plan)
        if outcome is Outcome.FAILED:
            await ex.fail(500, ex.knobs.stream_error)
            return
        if outcome is Outcome.DONE:
            choice = {"text": plan.content, "index": 0, "finish_reason": plan.done_reason}
            usage = _usage(ex.knobs, len(plan.pieces)) if plan.pieces else _usage_zero()
            head = _chunk_head(ident, "text_completion", created, raw)
            await _json(ex, {**head, "choices": [choice], "usage": usage})
        return
    await _stream_completion(ex, plan, ident, raw, _include_usage(request))


def _usage_zero() -> dict[str, int]:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


async def _stream_completion(ex: Exchange, plan: Script, ident: str, raw: str, usage: bool) -> None:
    def chunk(model: str, text: str, finish: str | None) -> dict[str, Any]:
        value: dict[str, Any] = {
            "id": ident,
            "object": "text_completion",
            "created": int(time.time()),
            "choices": [{"text": text, "index": 0, "finish_reason": finish}],
            "model": model,
            "system_fingerprint": FINGERPRINT,
        }
        if usage:
            value["usage"] = _usage_zero()
        return value

    async def emit(index: int, piece: Piece) -> bool:
        return await ex.write(sse_event(chunk(raw, piece.text, None)))

    ex.begin(200, SSE)
    outcome = await play(ex, plan, emit)
    if outcome is Outcome.ENDED:
        return
    if outcome is Outcome.FAILED:
        if ex.record.chunks_sent == 0:
            await ex.fail(500, ex.knobs.stream_error, from_stream=True)
            return
        if await ex.write(sse_event(chunk("", "", None))):
            await ex.end()
        return
    last = chunk(raw, "", plan.done_reason)
    tail = sse_event(last)
    if usage:
        last["choices"] = []
        last["usage"] = _usage(ex.knobs, len(plan.pieces)) if plan.pieces else _usage_zero()
        tail += sse_event(last)
    if await ex.write(tail + SSE_DONE):
        await ex.end()


async def embeddings(ex: Exchange, catalog: Catalog) -> None:
    request = await openai_request(ex, "openai.EmbedRequest", OPENAI_EMBED)
    if request is None:
        return
    encoding = request.get("encoding_format") or ""
    if encoding and encoding.lower() not in ("float", "base64"):
        message = f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64']."
        await openai_invalid(ex, message)
        return
    value = request.get("input")
    inputs = [""] if value == "" else embed_inputs(value)
    if not inputs:
        await openai_invalid(ex, "invalid input")
        return
    raw = request.get("model") or ""
    model = await find_embedder(ex, catalog, raw)
    if model is None:
        return
    clock = Clock()
    if not await prepare(ex, clock):
        return
    catalog.load(model, None)
    data = []
    for index, text in enumerate(inputs):
        floats = vector(text, request.get("dimensions"))
        encoded: object = floats
        if encoding.lower() == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(floats)}f", *floats)).decode()
        data.append({"object": "embedding", "embedding": encoded, "index": index})
    tokens = ex.knobs.prompt_eval_count * len(inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    await _json(ex, {"object": "list", "data": data, "model": raw, "usage": usage})


def _model_entry(model_id: str, created: int) -> dict[str, Any]:
    name = parse_name(model_id)
    owner = name.namespace if name is not None else ""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}


async def models(ex: Exchange, catalog: Catalog) -> None:
    entries = [_model_entry(m.display, m.modified_ns // 1_000_000_000) for m in catalog.installed()]
    # Go marshals the nil slice of an empty list as null.
    await _json(ex, {"object": "list", "data": entries or None})


async def model(ex: Exchange, catalog: Catalog) -> None:
    requested = ex.params["model"]
    name = parse_name(requested)
    found = catalog.find(name) if name is not None else None
    if found is None:
        shown = name.display if name is not None else requested
        await ex.fail(404, f"model '{shown}' not found")
        return
    await _json(ex, _model_entry(requested, found.modified_ns // 1_000_000_000))
