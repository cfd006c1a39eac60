"""The deterministic "model": which pieces a reply has, and what its metrics say."""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .behaviour import Behaviour
from .exchange import Exchange
from .wire import omit_zero

METRIC_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@dataclass(frozen=True)
class Piece:
    text: str
    thinking: bool = False


@dataclass(frozen=True)
class Script:
    pieces: list[Piece]
    done_reason: str

    @property
    def content(self) -> str:
        return "".join(p.text for p in self.pieces if not p.thinking)

    @property
    def thinking(self) -> str:
        return "".join(p.text for p in self.pieces if p.thinking)


def script(knobs: Behaviour, *, think: bool, limit: Any = None) -> Script:
    """The reply: thinking pieces first, then content, cut short by a token limit."""
    content = list(knobs.pieces) if knobs.pieces is not None else [f"tok{i} " for i in range(knobs.tokens)]
    reason = knobs.done_reason
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(content):
        content, reason = content[:limit], "length"
    thoughts = [Piece(f"think{i} ", thinking=True) for i in range(knobs.thinking_tokens)] if think else []
    return Script(thoughts + [Piece(text) for text in content], reason)


class Clock:
    """Measures one request so the durations in the final chunk are plausible."""

    def __init__(self) -> None:
        self.started = time.monotonic_ns()
        self.loaded = self.started
        self.first_token = self.started

    def mark_loaded(self) -> None:
        self.loaded = self.first_token = time.monotonic_ns()

    def metrics(self, knobs: Behaviour, generated: int) -> dict[str, int]:
        now = time.monotonic_ns()
        prompt = knobs.prompt_eval_count
        values = {
            "total_duration": max(now - self.started, 1),
            "load_duration": max(self.loaded - self.started, 1),
            "prompt_eval_count": prompt,
            "prompt_eval_duration": 1_000_000 if prompt else 0,
            "eval_count": generated if knobs.eval_count is None else knobs.eval_count,
            "eval_duration": max(now - self.first_token, 1),
        }
        return omit_zero(values, METRIC_FIELDS)


class Outcome(enum.Enum):
    DONE = "done"
    FAILED = "failed"  # fail_after reached: the caller writes its dialect's error
    ENDED = "ended"  # client gone or connection cut


async def play(ex: Exchange, plan: Script, emit: Callable[[int, Piece], Awaitable[bool]]) -> Outcome:
    """Stream the pieces with the configured pacing; `emit` writes one chunk."""
    knobs = ex.knobs
    for index, piece in enumerate(plan.pieces):
        if index and not await ex.pause(knobs.token_delay):
            return Outcome.ENDED
        if knobs.fail_after is not None and index >= knobs.fail_after:
            return Outcome.FAILED
        if not await emit(index, piece):
            return Outcome.ENDED
    if plan.pieces and not await ex.pause(knobs.token_delay):
        return Outcome.ENDED
    if knobs.fail_after is not None and knobs.fail_after <= len(plan.pieces):
        return Outcome.FAILED
    return Outcome.DONE


async def wait_whole(ex: Exchange, plan: Script) -> Outcome:
    """stream:false: nothing is sent until the whole generation is done."""
    knobs = ex.knobs
    count = len(plan.pieces)
    if knobs.fail_after is not None and knobs.fail_after <= count:
        count, outcome = knobs.fail_after, Outcome.FAILED
    else:
        outcome = Outcome.DONE
    if not await ex.pause(knobs.token_delay * count):
        return Outcome.ENDED
    return outcome


async def prepare(ex: Exchange, clock: Clock) -> bool:
    """After validation: a forced scheduler error, or the model-load delay."""
    forced = ex.knobs.forced_error()
    if forced is not None:
        await ex.fail(*forced, from_stream=ex.knobs.error_from_stream)
        return False
    alive = await ex.pause(ex.knobs.first_byte_delay)
    clock.mark_loaded()
    return alive
