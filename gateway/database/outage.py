"""An outage told once: a log line when work that is retried starts failing, one for each other
reason it fails for meanwhile, and one when it works again, whatever the number of attempts in
between. A store polled every second that is down for an hour writes two lines, not 3,600, and a
reason that comes back (two hosts refusing in turn) is not told again. Knows nothing of what
fails: the caller words each line.
"""

from __future__ import annotations

import logging

# Reasons told per outage at most: one that embeds a changing detail must not log every attempt.
MAX_REASONS = 16


class OutageLog:
    def __init__(self, logger: logging.Logger, recovered: str) -> None:
        self._logger = logger
        self._recovered = recovered
        self._told: set[str] = set()  # the current outage's reasons, already logged

    def failed(self, message: str, level: int = logging.WARNING) -> None:
        """This attempt failed as ``message`` says: logged unless this outage has said it already."""
        if message in self._told or len(self._told) >= MAX_REASONS:
            return
        self._told.add(message)
        self._logger.log(level, "%s", message)

    def succeeded(self) -> bool:
        """This attempt worked: logged if an outage was under way; True then (it has ended)."""
        if not self._told:
            return False
        self._told.clear()
        self._logger.warning("%s", self._recovered)
        return True
