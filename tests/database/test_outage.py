"""An outage is told once: one line when it begins (or its reason changes), one when it ends."""

from __future__ import annotations

import logging

from gateway.database.outage import OutageLog


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def _logger(name: str) -> tuple[logging.Logger, Lines]:
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    lines = Lines()
    logger.addHandler(lines)
    return logger, lines


def test_a_long_outage_is_two_lines_and_a_new_reason_one_more() -> None:
    logger, lines = _logger("tests.outage.long")
    outage = OutageLog(logger, "store back")
    assert not outage.succeeded()  # nothing had failed: nothing to say
    for _ in range(100):
        outage.failed("store down: locked")
    outage.failed("store down: disk full", logging.ERROR)
    outage.failed("store down: disk full", logging.ERROR)
    assert outage.succeeded()
    assert not outage.succeeded()
    outage.failed("store down: locked")
    assert lines.lines == [
        (logging.WARNING, "store down: locked"),
        (logging.ERROR, "store down: disk full"),
        (logging.WARNING, "store back"),
        (logging.WARNING, "store down: locked"),
    ]
