"""An outage is told once: one line when it begins, one per other reason meanwhile, one when it ends."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.database.outage import MAX_REASONS, OutageLog


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


@contextmanager
def logged(name: str) -> Iterator[tuple[logging.Logger, Lines]]:
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    lines = Lines()
    logger.addHandler(lines)
    try:
        yield logger, lines
    finally:
        logger.removeHandler(lines)


def test_a_long_outage_is_told_once_with_each_reason_once() -> None:
    with logged("tests.outage.long") as (logger, lines):
        outage = OutageLog(logger, "store back")
        assert not outage.succeeded()  # nothing had failed: nothing to say
        for _ in range(100):
            outage.failed("store down: locked")
        outage.failed("store down: disk full", logging.ERROR)
        outage.failed("store down: locked")  # back to the first reason: already told
        assert outage.succeeded()
        assert not outage.succeeded()
        outage.failed("store down: locked")  # a new outage
    assert lines.lines == [
        (logging.WARNING, "store down: locked"),
        (logging.ERROR, "store down: disk full"),
        (logging.WARNING, "store back"),
        (logging.WARNING, "store down: locked"),
    ]


def test_reasons_that_never_repeat_are_told_a_bounded_number_of_times() -> None:
    with logged("tests.outage.bounded") as (logger, lines):
        outage = OutageLog(logger, "back")
        for attempt in range(1000):
            outage.failed(f"timed out after {attempt} ms")
        assert outage.succeeded()
    assert len(lines.lines) == MAX_REASONS + 1
    assert lines.lines[-1] == (logging.WARNING, "back")
