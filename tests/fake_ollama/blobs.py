"""HEAD and POST /api/blobs/:digest. Bodies are hashed as they stream in, never buffered."""

from __future__ import annotations

import re

from .catalog import Catalog
from .exchange import Exchange
from .wire import go_quote

_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


def canonical(digest: str) -> str:
    return "sha256:" + digest[7:]


async def head(ex: Exchange, catalog: Catalog) -> None:
    digest = ex.params["digest"]
    if not _DIGEST.fullmatch(digest):
        await ex.fail(400, "invalid digest format")
        return
    if not catalog.has_blob(canonical(digest)):
        await ex.fail(404, f"blob {go_quote(digest)} not found")
        return
    await ex.respond(200)


async def upload(ex: Exchange, catalog: Catalog) -> None:
    """The app leaves this body unread so it can be consumed chunk by chunk here."""
    async for _ in ex.stream_body():
        pass  # stream_body hashes into the record
    if ex.ended:
        return
    digest = ex.params["digest"]
    if not _DIGEST.fullmatch(digest):
        await ex.fail(400, "invalid digest format")
        return
    if catalog.has_blob(canonical(digest)):
        await ex.respond(200)
        return
    actual = "sha256:" + ex.record.body_sha256
    # Ollama compares the path parameter verbatim, so the `sha256-` spelling never matches here.
    if actual != digest:
        await ex.fail(400, f"digest mismatch, expected {go_quote(digest)}, got {go_quote(actual)}")
        return
    catalog.add_blob(actual)
    await ex.respond(201)
