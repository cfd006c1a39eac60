"""The parse worker: ``python -m gateway.ollama.bodyworker`` reads request bodies on stdin and writes
what the gateway reads of each (``BodyFacts``, or Ollama's reason to refuse it) on stdout, one body
at a time, until stdin ends.

Parsing JSON holds the GIL: a body of a million members took seconds, during which the gateway's
event loop, and every stream it relays, stood still. In a process of its own (at a lower priority,
so relaying comes first when both want the CPU) the parse costs the others nothing but a share of
a core. Framing, both ways: an 8-byte big-endian length, then that many bytes; an answer is a
pickle of ``("facts", BodyFacts)`` or ``("refused", message)``. It knows nothing of the gateway
beyond the body.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
from typing import BinaryIO

from gateway.errors import BadRequest
from gateway.ollama.bodyfacts import BodyFacts

LENGTH = 8
NICENESS = 10


def answer(raw: bytes) -> bytes:
    try:
        result: tuple[str, object] = ("facts", BodyFacts.read(raw))
    except BadRequest as refusal:
        result = ("refused", refusal.message)
    return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)


def serve(source: BinaryIO, sink: BinaryIO) -> None:
    while len(head := source.read(LENGTH)) == LENGTH:
        raw = source.read(int.from_bytes(head, "big"))
        data = answer(raw)
        del raw  # before writing: the next body may be as large
        sink.write(len(data).to_bytes(LENGTH, "big") + data)
        sink.flush()


def main() -> None:
    # Ctrl-C reaches the whole process group: the gateway ends this process (its stdin closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
