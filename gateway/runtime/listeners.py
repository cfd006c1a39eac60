"""The main listener and, when set, side listeners served by the same event loop in one process:
``GATEWAY_METRICS_ADDRESS`` for ``/metrics`` without a key, ``GATEWAY_ADMIN_ADDRESS`` for the admin
API and page (then only there)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from gateway.routes.dispatch import Gateway
from gateway.runtime.http_protocol import GatewayHttpProtocol
from gateway.settings import Settings


class _SideServer(uvicorn.Server):
    """A second listener in the same process; the main server owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def metrics_listener(settings: Settings, app: Gateway) -> uvicorn.Server | None:
    if not settings.metrics_address:
        return None
    return _side(app.metrics_app, settings.metrics_address, settings)


def admin_listener(settings: Settings, app: Gateway) -> uvicorn.Server | None:
    if not settings.admin_address or app.admin_app is None:
        return None
    # The admin app at /admin, as on the main port; everything else there is a 404.
    return _side(Starlette(routes=[Mount("/admin", app.admin_app)]), settings.admin_address, settings)


def _side(app: ASGIApp, address: str, settings: Settings) -> _SideServer:
    host, _, port = address.rpartition(":")
    config = uvicorn.Config(
        app,
        host=host,
        port=int(port),
        lifespan="off",
        log_level=settings.log_level,
        # The same request-head limits as the main listener.
        http=GatewayHttpProtocol,
        # As on the main port: forwarded headers count only from GATEWAY_TRUSTED_PROXIES (the
        # gateway's own resolver), so no client can pick the address its lockout is counted for.
        proxy_headers=False,
        server_header=False,
        access_log=False,
    )
    return _SideServer(config)


async def serve_all(main: uvicorn.Server, *sides: uvicorn.Server | None) -> None:
    running = [side for side in sides if side is not None]
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(side.serve()) for side in running]
    try:
        await main.serve()
    finally:
        for side in running:
            side.should_exit = True
        await asyncio.gather(*tasks)
