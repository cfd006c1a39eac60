"""The main listener and, when ``GATEWAY_METRICS_ADDRESS`` is set, a second one for ``/metrics``
without a key, served by one event loop in one process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from gateway.dispatch import Gateway
from gateway.settings import Settings


class _SideServer(uvicorn.Server):
    """A second listener in the same process; the main server owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def metrics_listener(settings: Settings, app: Gateway) -> uvicorn.Server | None:
    if not settings.metrics_address:
        return None
    host, _, port = settings.metrics_address.rpartition(":")
    return _SideServer(
        uvicorn.Config(app.metrics_app, host=host, port=int(port), lifespan="off", log_level=settings.log_level)
    )


async def serve_all(main: uvicorn.Server, side: uvicorn.Server | None) -> None:
    side_task = asyncio.get_running_loop().create_task(side.serve()) if side else None
    try:
        await main.serve()
    finally:
        if side is not None and side_task is not None:
            side.should_exit = True
            await side_task
