"""What every serving process does once, after building its app and before taking requests."""

from __future__ import annotations

import gc
import logging

from gateway.runtime.allocator import keep_large_blocks


def prepare_process() -> None:
    if keep_large_blocks():
        logging.getLogger("gateway").debug("malloc thresholds fixed for relaying large buffers")
    # Everything built so far (imports, the app) lives as long as the process: moving it out of
    # the collector's reach makes every full collection on the request path far cheaper.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
