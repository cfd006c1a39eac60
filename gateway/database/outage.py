"""An outage told once: a log line when work that is retried starts failing (or fails for another
reason), and one when it works again, whatever the number of attempts in between. A store polled
every second that is down for an hour writes two lines, not 3,600.
"""

from __future__ import annotations

import logging


class OutageLog:
    def __init__(self, logger: logging.Logger, recovered: str) -> None:
        self._logger = logger
        self._recovered = recovered
        self._current: str | None = None

    def failed(self, message: str, level: int = logging.WARNING) -> None:
        """This attempt failed as ``message`` says: logged unless it is what the last one said."""
        if message != self._current:
            self._current = message
            self._logger.log(level, "%s", message)

    def succeeded(self) -> bool:
        """This attempt worked: logged if the one before failed; True then (it was an outage's end)."""
        if self._current is None:
            return False
        self._current = None
        self._logger.warning("%s", self._recovered)
        return True
