"""POST /api/generate and /api/chat: NDJSON streams or one aggregated object."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .catalog import Catalog, Model
from .exchange import Exchange
from .generation import Clock, Outcome, Piece, Script, play, prepare, script, wait_whole
from .names import parse_name
from .schemas import CHAT, GENERATE, native_request
from .wire import NDJSON, go_quote, ndjson_line, rfc3339_nano

# content, thinking, done, done_reason -> one response object
Shape = Callable[[str, str, bool, str | None], dict[str, Any]]


def resolve_think(model: Model, raw: str, value: Any) -> bool | str:
    """Whether the reply thinks, or the 400 message. Absent means on for capable models."""
    capable = "thinking" in model.capabilities
    if value is None:
        return capable
    if value is False or value == "false":
        return False
    if not capable:
        return f"{go_quote(raw)} does not support thinking"
    return True


def _num_predict(request: dict[str, Any]) -> Any:
    options = request.get("options") or {}
    return options.get("num_predict")


async def generate(ex: Exchange, catalog: Catalog) -> None:
    request = await native_request(ex, "api.GenerateRequest", GENERATE)
    if request is None:
        return
    raw = request.get("model") or ""
    name = parse_name(raw)
    if name is None:
        # Ollama answers an invalid or empty name with this 404 on purpose.
        await ex.fail(404, f"model '{raw}' not found")
        return
    raw_mode = bool(request.get("raw"))
    if raw_mode and (request.get("template") or request.get("system") or request.get("context")):
        await ex.fail(400, "raw mode does not support template, system, or context")
        return
    model = catalog.find(name)
    if model is None:
        await ex.fail(404, f"model '{raw}' not found")
        return

    def shape(content: str, thinking: str, done: bool, reason: str | None) -> dict[str, Any]:
        value: dict[str, Any] = {"model": raw, "created_at": rfc3339_nano(), "response": content}
        if thinking:
            value["thinking"] = thinking
        value["done"] = done
        if reason:
            value["done_reason"] = reason
        return value

    prompt = request.get("prompt") or ""
    keep_alive = request.get("keep_alive")
    if not prompt and keep_alive == 0:
        catalog.load(model, 0)
        await ex.respond_json(200, shape("", "", True, "unload"))
        return
    if "completion" not in model.capabilities:
        await ex.fail(400, f"{go_quote(raw)} does not support generate")
        return
    think = resolve_think(model, raw, request.get("think"))
    if isinstance(think, str):
        await ex.fail(400, think)
        return
    clock = Clock()
    if not await prepare(ex, clock):
        return
    catalog.load(model, keep_alive)
    if not prompt:
        await ex.respond_json(200, shape("", "", True, "load"))
        return
    plan = script(ex.knobs, think=think, limit=_num_predict(request))
    generated = ex.knobs.eval_count if ex.knobs.eval_count is not None else len(plan.pieces)
    extra = {} if raw_mode else _context(ex.knobs.prompt_eval_count + generated)
    await respond(ex, plan, clock, request.get("stream") is not False, shape, extra)


async def chat(ex: Exchange, catalog: Catalog) -> None:
    request = await native_request(ex, "api.ChatRequest", CHAT)
    if request is None:
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

    def shape(content: str, thinking: str, done: bool, reason: str | None) -> dict[str, Any]:
        message = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        value: dict[str, Any] = {"model": raw, "created_at": rfc3339_nano(), "message": message, "done": done}
        if reason:
            value["done_reason"] = reason
        return value

    messages = request.get("messages") or []
    keep_alive = request.get("keep_alive")
    if not messages and keep_alive == 0:
        catalog.load(model, 0)
        await ex.respond_json(200, shape("", "", True, "unload"))
        return
    if "completion" not in model.capabilities:
        await ex.fail(400, f"{go_quote(raw)} does not support chat")
        return
    think = resolve_think(model, raw, request.get("think"))
    if isinstance(think, str):
        await ex.fail(400, think)
        return
    clock = Clock()
    if not await prepare(ex, clock):
        return
    catalog.load(model, keep_alive)
    if not messages:
        await ex.respond_json(200, shape("", "", True, "load"))
        return
    plan = script(ex.knobs, think=think, limit=_num_predict(request))
    await respond(ex, plan, clock, request.get("stream") is not False, shape, {})


async def respond(ex: Exchange, plan: Script, clock: Clock, stream: bool, shape: Shape, extra: dict[str, Any]) -> None:
    """Play the script as NDJSON, or wait and send the aggregate."""
    knobs = ex.knobs
    if not stream:
        outcome = await wait_whole(ex, plan)
        if outcome is Outcome.FAILED:
            await ex.fail(500, knobs.stream_error)
        elif outcome is Outcome.DONE:
            final = shape(plan.content, plan.thinking, True, plan.done_reason)
            await ex.respond_json(200, {**final, **extra, **clock.metrics(knobs, len(plan.pieces))})
        return

    async def emit(index: int, piece: Piece) -> bool:
        if piece.thinking:
            return await ex.write(ndjson_line(shape("", piece.text, False, None)))
        return await ex.write(ndjson_line(shape(piece.text, "", False, None)))

    ex.begin(200, NDJSON)
    outcome = await play(ex, plan, emit)
    if outcome is Outcome.ENDED:
        return
    if outcome is Outcome.FAILED and ex.record.chunks_sent == 0:
        await ex.fail(500, knobs.stream_error, from_stream=True)
        return
    if outcome is Outcome.FAILED:
        line = ndjson_line({"error": knobs.stream_error})
    else:
        final = {**shape("", "", True, plan.done_reason), **extra, **clock.metrics(knobs, len(plan.pieces))}
        line = ndjson_line(final)
    if await ex.write(line):
        await ex.end()


def _context(length: int) -> dict[str, Any]:
    return {"context": list(range(1, length + 1))} if length else {}
