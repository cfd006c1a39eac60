"""The gateway's own log lines (start-up report, Redis down, usage not written, ...) on stderr,
beside uvicorn's and lined up with them. The access log is separate (``accesslog.py``, stdout)."""

from __future__ import annotations

import logging


class _Aligned(logging.Formatter):
    """``WARNING:  gateway: …`` lined up with uvicorn's own ``INFO:     …`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelprefix = f"{record.levelname}:".ljust(9)
        return super().format(record)


def configure_logging(level: str) -> None:
    logger = logging.getLogger("gateway")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_Aligned("%(levelprefix)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
