"""The admin page's files, from the package (no CDN: the page works offline).

Only the files named here are served, read once when the app is built: a request names a key of
this table, never a path on disk, so nothing outside it can be reached (``../``, encoded or not).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Response

from gateway.errors import NotFound

_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "session.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "keys.js": "text/javascript; charset=utf-8",
    "usage.js": "text/javascript; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "connect.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    # uPlot 1.6.32 (MIT), vendored from the npm registry: see uPlot.LICENSE.
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def served() -> frozenset[str]:
    """Every file the page may load (the tests check this against the directory)."""
    return frozenset({"index.html", *_TYPES})


def _read(name: str) -> bytes:
    return (resources.files("gateway.admin") / "static" / name).read_bytes()


def static_router() -> APIRouter:
    files = {name: (_read(name), media_type) for name, media_type in _TYPES.items()}
    index = _read("index.html")
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def page() -> Response:
        return Response(index, media_type="text/html; charset=utf-8")

    @router.get("/static/{name}")
    async def static_file(name: str) -> Response:
        found = files.get(name)
        if found is None:
            raise NotFound("no such file")
        return Response(found[0], media_type=found[1])

    return router
