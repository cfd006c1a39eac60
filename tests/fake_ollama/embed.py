"""POST /api/embed and the legacy /api/embeddings."""

from __future__ import annotations

import hashlib
from typing import Any

from .catalog import Catalog, Model
from .exchange import Exchange
from .generation import Clock, prepare
from .names import parse_name
from .schemas import EMBED, EMBEDDINGS, native_request
from .wire import go_quote, omit_zero

DIMENSIONS = 8


def vector(text: str, dimensions: int | None = None) -> list[float]:
    """A deterministic embedding. Odd multiples of 1/64 print identically from Go and Python."""
    size = dimensions if dimensions and dimensions > 0 else DIMENSIONS
    seed = hashlib.sha256(text.encode()).digest()
    while len(seed) < size:
        seed += hashlib.sha256(seed).digest()
    return [(2 * (seed[i] % 64) - 63) / 64 for i in range(size)]


def embed_inputs(value: Any) -> list[str] | None:
    """The inputs of an embed request; None when the type is wrong."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


async def find_embedder(ex: Exchange, catalog: Catalog, raw: str) -> Model | None:
    name = parse_name(raw)
    model = catalog.find(name) if name is not None else None
    if model is None:
        await ex.fail(404, f"model {go_quote(raw)} not found, try pulling it first")
    return model


async def embed(ex: Exchange, catalog: Catalog) -> None:
    request = await native_request(ex, "api.EmbedRequest", EMBED)
    if request is None:
        return
    raw = request.get("model") or ""
    inputs = embed_inputs(request.get("input"))
    if inputs is None:
        await ex.fail(400, "invalid input type")
        return
    model = await find_embedder(ex, catalog, raw)
    if model is None:
        return
    if not inputs:
        await ex.respond_json(200, {"model": raw, "embeddings": []})
        return
    clock = Clock()
    if not await prepare(ex, clock):
        return
    catalog.load(model, request.get("keep_alive"))
    metrics = clock.metrics(ex.knobs, 0)
    body = {
        "model": raw,
        "embeddings": [vector(text, request.get("dimensions")) for text in inputs],
        "total_duration": metrics["total_duration"],
        "load_duration": metrics["load_duration"],
        "prompt_eval_count": ex.knobs.prompt_eval_count * len(inputs),
    }
    await ex.respond_json(200, omit_zero(body, ("prompt_eval_count",)))


async def embeddings(ex: Exchange, catalog: Catalog) -> None:
    request = await native_request(ex, "api.EmbeddingRequest", EMBEDDINGS)
    if request is None:
        return
    model = await find_embedder(ex, catalog, request.get("model") or "")
    if model is None:
        return
    prompt = request.get("prompt") or ""
    clock = Clock()
    if not await prepare(ex, clock):
        return
    catalog.load(model, request.get("keep_alive"))
    await ex.respond_json(200, {"embedding": vector(prompt) if prompt else []})
