"""How big each scenario is: the real run, and the smoke size that keeps the harness from rotting."""

from __future__ import annotations

from dataclasses import dataclass, replace

MiB = 1 << 20


@dataclass(frozen=True)
class Plan:
    repeat: int = 3
    # (a) small non-streamed requests, closed loop
    concurrencies: tuple[int, ...] = (1, 16, 64)
    closed_loop_seconds: float = 3.0
    # (b) concurrent streams
    stream_counts: tuple[int, ...] = (100, 500, 1000)
    stream_tokens: int = 40
    token_interval: float = 0.1  # 10 tokens/s
    stream_ramp: float = 1.0  # stream starts spread over this long
    # (c) blob upload
    blob_bytes: int = 1 << 30
    # (d) hang-ups
    hang_ups: int = 100
    # a freshly started gateway for every gateway run (one for the whole run otherwise)
    fresh_gateway: bool = True
    # pause between runs, so one run's teardown does not land in the next one's window
    settle: float = 0.3

    def with_repeat(self, repeat: int | None) -> Plan:
        return self if repeat is None else replace(self, repeat=repeat)


FULL = Plan()
QUICK = Plan(
    repeat=1,
    concurrencies=(2,),
    closed_loop_seconds=0.3,
    stream_counts=(8,),
    stream_tokens=5,
    token_interval=0.02,
    stream_ramp=0.02,
    blob_bytes=4 * MiB,
    hang_ups=5,
    settle=0.05,
    # Seconds matter more than independent runs here; restarts are exercised by every real run.
    fresh_gateway=False,
)
