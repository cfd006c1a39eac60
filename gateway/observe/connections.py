"""New connections the process cannot afford: refused while it is near its file-descriptor limit,
logged once per burst and counted.

At the limit itself nothing can be seen: uvloop's libuv accepts and at once closes every pending
connection when ``accept()`` fails with EMFILE (its reserved-descriptor trick), without a word to
Python. So the line is drawn a little before it: the kernel hands out the lowest free descriptor,
so a connection that arrives as descriptor N proves N descriptors are open; past the soft
``RLIMIT_NOFILE`` minus a reserve (the upstream connections of requests already admitted, the
database, the log) the connection gets a 503 and is closed. It knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable

log = logging.getLogger("gateway.connections")

# Descriptors kept for what admitted requests still need (their upstream connections, mostly).
RESERVE = 32
# A refusal after this long without one starts a new burst, which is logged again.
QUIET = 10.0
# Where the server finds the guard: the application's lifespan state, which uvicorn hands to
# every connection it accepts.
STATE_KEY = "gateway.connection_guard"


def descriptor_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE`` (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class ConnectionGuard:
    """``limit``: the descriptors the process may open (``descriptor_limit()``; None: no limit)."""

    def __init__(
        self,
        *,
        on_refused: Callable[[], object],
        limit: int | None,
        reserve: int = RESERVE,
        quiet: float = QUIET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_refused = on_refused
        self.limit = limit
        # Never 0: a tiny limit still admits the connections it can.
        self._threshold = None if self.limit is None else max(self.limit - reserve, self.limit // 2)
        self._quiet = quiet
        self._clock = clock
        self._last: float | None = None

    def admits(self, descriptor: int) -> bool:
        """Whether a connection that arrived as ``descriptor`` may be served."""
        if self._threshold is None or descriptor < self._threshold:
            return True
        self._on_refused()
        now = self._clock()
        if self._last is None or now - self._last >= self._quiet:
            log.warning(
                "refusing new connections with 503: at least %d of the %d file descriptors this process "
                "may open are in use; raise the limit (ulimit -n, systemd LimitNOFILE=, docker --ulimit "
                "nofile=) or add gateway processes (each refusal counts in gateway_connections_refused_total)",
                descriptor + 1,
                self.limit,
            )
        self._last = now
        return False
