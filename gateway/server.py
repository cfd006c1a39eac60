"""Running the gateway under uvicorn, with the settings that streaming needs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn

from gateway.allocator import keep_large_blocks
from gateway.app import Gateway, create_app
from gateway.http_protocol import GatewayHttpProtocol
from gateway.settings import Settings


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        # uvloop when installed (uvicorn[standard]); uvicorn's httptools parser, bodies uncopied.
        "loop": "auto",
        "http": GatewayHttpProtocol,
        "lifespan": "on",
        # Forwarded headers are handled by the gateway itself, from configured peers only.
        "proxy_headers": False,
        "server_header": False,
        "access_log": False,
        "log_level": settings.log_level,
        # On SIGTERM: stop accepting, let in-flight requests (streams too) finish for this long.
        "timeout_graceful_shutdown": round(settings.shutdown_grace),
        "timeout_keep_alive": 75,
    }


def uvicorn_config(settings: Settings, app: Gateway) -> uvicorn.Config:
    return uvicorn.Config(app, **_options(settings))


class _SideServer(uvicorn.Server):
    """A second listener in the same process; the main server owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_all(main: uvicorn.Server, side: uvicorn.Server | None) -> None:
    side_task = asyncio.get_running_loop().create_task(side.serve()) if side else None
    try:
        await main.serve()
    finally:
        if side is not None and side_task is not None:
            side.should_exit = True
            await side_task


class _Aligned(logging.Formatter):
    """``WARNING:  gateway: …`` lined up with uvicorn's own ``INFO:     …`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelprefix = f"{record.levelname}:".ljust(9)
        return super().format(record)


def configure_logging(level: str) -> None:
    """The gateway's own warnings (Redis down, usage not written, ...) on stderr, beside uvicorn's."""
    logger = logging.getLogger("gateway")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_Aligned("%(levelprefix)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def _prepare_process() -> None:
    if keep_large_blocks():
        logging.getLogger("gateway").debug("malloc thresholds fixed for relaying large buffers")
    # Everything built so far (imports, the app) lives as long as the process: moving it out of
    # the collector's reach makes every full collection on the request path far cheaper.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def app_from_environment() -> Gateway:
    """The app factory each worker process calls when GATEWAY_WORKERS > 1."""
    settings = Settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    _prepare_process()
    return app


def _serve_workers(settings: Settings) -> int:
    # Each worker builds its own app from the environment; limits are shared through Redis
    # (settings refuse several workers without it).
    uvicorn.run("gateway.server:app_from_environment", factory=True, workers=settings.workers, **_options(settings))
    return 0


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level)
    if settings.workers > 1:
        return _serve_workers(settings)
    app = create_app(settings)
    config = uvicorn_config(settings, app)
    main = uvicorn.Server(config)
    side = None
    if settings.metrics_address:
        host, _, port = settings.metrics_address.rpartition(":")
        side = _SideServer(
            uvicorn.Config(app.metrics_app, host=host, port=int(port), lifespan="off", log_level=settings.log_level)
        )
    config.load()
    _prepare_process()
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        try:
            runner.run(_serve_all(main, side))
        except KeyboardInterrupt:
            # uvicorn re-raises the Ctrl-C it has already handled (shut down cleanly): no
            # traceback for that; 130 is what a shell reports for a command ended by SIGINT.
            return 130
    return 0 if main.started else 1
