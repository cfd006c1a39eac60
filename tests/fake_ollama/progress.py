"""POST /api/pull, /api/push, /api/create: progress NDJSON ending in `success`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from .catalog import Catalog
from .exchange import Exchange
from .generation import Clock, prepare
from .names import ModelName, parse_name
from .schemas import CREATE, TRANSFER, native_request
from .wire import NDJSON, ndjson_line

MANIFEST_MISSING = "pull model manifest: file does not exist"
Line = dict[str, Any]


def _layers(name: ModelName, size: int) -> list[tuple[str, int]]:
    digests = [hashlib.sha256(f"{name.key}#{i}".encode()).hexdigest() for i in range(2)]
    return [(f"sha256:{digests[0]}", size), (f"sha256:{digests[1]}", 1_234)]


def _transfer(verb: str, layers: list[tuple[str, int]]) -> list[Line]:
    lines: list[Line] = []
    for digest, total in layers:
        status = f"{verb} {digest[7:19]}"
        lines.append({"status": status, "digest": digest, "total": total})
        lines.append({"status": status, "digest": digest, "total": total, "completed": total // 2})
        lines.append({"status": status, "digest": digest, "total": total, "completed": total})
    return lines


async def pull(ex: Exchange, catalog: Catalog) -> None:
    request = await native_request(ex, "api.PullRequest", TRANSFER)
    if request is None:
        return
    name = parse_name(request.get("model") or request.get("name") or "")
    if name is None:
        await ex.fail(400, "invalid model name")
        return
    if not await prepare(ex, Clock()):
        return
    stream = request.get("stream") is not False
    if not catalog.in_registry(name):
        await run(ex, [{"status": "pulling manifest"}], stream, MANIFEST_MISSING)
        return
    installed = catalog.find(name)
    size = installed.size if installed is not None else 2_019_377_376
    lines = [
        {"status": "pulling manifest"},
        *_transfer("pulling", _layers(name, size)),
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    await run(ex, lines, stream, None, lambda: catalog.install(name))


async def push(ex: Exchange, catalog: Catalog) -> None:
    request = await native_request(ex, "api.PushRequest", TRANSFER)
    if request is None:
        return
    name = parse_name(request.get("model") or request.get("name") or "")
    if name is None:
        await ex.fail(400, "invalid model name")
        return
    if not await prepare(ex, Clock()):
        return
    stream = request.get("stream") is not False
    model = catalog.find(name)
    if model is None:
        await run(ex, [{"status": "retrieving manifest"}], stream, "file does not exist")
        return
    lines = [
        {"status": "retrieving manifest"},
        *_transfer("pushing", _layers(name, model.size)),
        {"status": "pushing manifest"},
        {"status": "success"},
    ]
    await run(ex, lines, stream, None)


async def create(ex: Exchange, catalog: Catalog) -> None:
    request = await native_request(ex, "api.CreateRequest", CREATE)
    if request is None:
        return
    name = parse_name(request.get("model") or request.get("name") or "")
    if name is None:
        await ex.fail(400, "invalid model name")
        return
    source, files = request.get("from"), request.get("files")
    if not source and not files:
        await ex.fail(400, "neither 'from' or 'files' was specified")
        return
    if not await prepare(ex, Clock()):
        return
    stream = request.get("stream") is not False
    if source:
        base = parse_name(source)
        model = catalog.find(base) if base is not None else None
        if model is None:
            await run(ex, [{"status": "pulling manifest"}], stream, MANIFEST_MISSING)
            return
        steps = [{"status": f"using existing layer {digest}"} for digest, _ in _layers(model.name, model.size)]
    else:
        digests = [str(d).replace("sha256-", "sha256:", 1) for d in (files or {}).values()]
        missing = [d for d in digests if not catalog.has_blob(d)]
        if missing:
            await ex.fail(400, f"blob {missing[0]} not found", from_stream=True)
            return
        steps = [{"status": "parsing GGUF"}, *({"status": f"using existing layer {d}"} for d in digests)]
    lines = [*steps, {"status": "writing manifest"}, {"status": "success"}]
    await run(ex, lines, stream, None, lambda: catalog.install(name))


async def run(
    ex: Exchange,
    lines: list[Line],
    stream: bool,
    error: str | None,
    on_success: Callable[[], object] | None = None,
) -> None:
    """Emit progress lines; `error` (or `fail_after`) ends the stream with an error line."""
    knobs = ex.knobs
    if knobs.fail_after is not None and knobs.fail_after < len(lines):
        lines, error = lines[: knobs.fail_after], knobs.stream_error
    succeed = on_success if error is None else None
    if not stream:
        if await ex.pause(knobs.token_delay * len(lines)):
            # waitForStream: Content-Type application/json, then c.JSON
            if succeed is not None:
                succeed()
            if error is None:
                await ex.respond_json(200, lines[-1], charset=False)
            else:
                await ex.respond_json(500, {"error": error}, charset=False)
        return
    ex.begin(200, NDJSON)
    for index, line in enumerate(lines):
        if index and not await ex.pause(knobs.token_delay):
            return
        if succeed is not None and index == len(lines) - 1:
            succeed()  # installed before `success` is seen, so a follow-up /api/tags agrees
        if not await ex.write(ndjson_line(line)):
            return
    if error is None:
        await ex.end()
        return
    if not lines:
        await ex.fail(500, error, from_stream=True)
        return
    if await ex.pause(knobs.token_delay) and await ex.write(ndjson_line({"error": error})):
        await ex.end()
