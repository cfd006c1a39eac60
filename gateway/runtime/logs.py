"""The gateway's own log lines (start-up report, Redis down, usage not written, ...) on stderr,
beside uvicorn's and lined up with them. The access log is separate (``observe/accesslog.py``, stdout)."""

from __future__ import annotations

import logging

from gateway.proxy.relay import ResponseAborted


class _Aligned(logging.Formatter):
    """``WARNING:  gateway: …`` lined up with uvicorn's own ``INFO:     …`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelprefix = f"{record.levelname}:".ljust(9)
        return super().format(record)


class _DropAborted(logging.Filter):
    """uvicorn logs any exception that leaves the app as a traceback; ``ResponseAborted`` is how
    the relay drops a connection whose fixed-length body broke off (the access log records it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ResponseAborted))


def configure_logging(level: str) -> None:
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(item, _DropAborted) for item in uvicorn_errors.filters):
        uvicorn_errors.addFilter(_DropAborted())
    logger = logging.getLogger("gateway")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_Aligned("%(levelprefix)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
