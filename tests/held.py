"""Requests held open: several streams of one key, each in its own thread, that the fake Ollama
writes only as a ``StepGate`` allows (to see them in flight, or waiting in a queue behind them)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.fake_ollama import StepGate

WAIT = 20.0


@contextmanager
def held_streams(url: str, key: str, model: str, count: int, gate: StepGate) -> Iterator[list[int]]:
    """``count`` streams of one key, each in its own thread, held by ``gate`` while the block runs;
    then released and read to their end. Yields their statuses (filled as they end)."""
    statuses: list[int] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            url + "/api/chat",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=WAIT,
        ) as response:
            for _ in response.iter_lines():
                pass
            statuses.append(response.status_code)

    workers = [threading.Thread(target=stream) for _ in range(count)]
    for worker in workers:
        worker.start()
    try:
        yield statuses
    finally:
        gate.release(10 * count)
        for worker in workers:
            worker.join(WAIT)
