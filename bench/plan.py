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
    # (e) one large body beside a stream and a /healthz poll: members of the flat bodies, and the
    # size of the image
    stall_members: tuple[int, ...] = (1_000_000, 4_000_000)
    stall_image_bytes: int = 90 * MiB
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
    stall_members=(10_000,),
    stall_image_bytes=MiB,
    settle=0.05,
    # Seconds matter more than independent runs here; restarts are exercised by every real run.
    fresh_gateway=False,
)


@dataclass(frozen=True)
class SoakPlan:
    """The soak: ``streams`` streams kept open for ``minutes``, with cuts and hang-ups mixed in.

    Every stream draws its shape from a generator seeded per slot, so two runs with the same plan
    ask for the same streams in the same order on each slot.
    """

    minutes: float = 10.0
    streams: int = 200
    tokens: tuple[int, int] = (20, 80)  # per stream, uniform; 2 to 8 s at 10 tokens/s
    token_interval: float = 0.1
    # Share of streams the upstream cuts after a random token (orderly close, reset), and of
    # streams the client hangs up on after a random token; the rest run to their end.
    cut_fin: float = 0.05
    cut_rst: float = 0.05
    hang_up: float = 0.05
    fresh_connection: float = 0.1  # streams that open a new connection although theirs is reusable
    ramp: float = 2.0  # the first streams start spread over this long
    small_clients: int = 4  # connections sending small non-streamed requests
    small_pause: float = 0.02  # between one small answer and the next request on a connection
    sample_every: float = 2.0  # gateway RSS and CPU
    rss_baseline: float = 60.0  # "RSS after the first minute" (at most half the window)
    bucket: float = 60.0  # timeline rows
    seed: int = 1

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    def with_size(self, minutes: float | None, streams: int | None) -> SoakPlan:
        return replace(
            self,
            minutes=self.minutes if minutes is None else minutes,
            streams=self.streams if streams is None else streams,
        )


SOAK = SoakPlan()
SOAK_QUICK = SoakPlan(
    minutes=0.15,
    streams=10,
    tokens=(5, 30),
    token_interval=0.02,
    # Higher shares, so that a few seconds still hold several streams of every kind.
    cut_fin=0.15,
    cut_rst=0.15,
    hang_up=0.15,
    ramp=0.1,
    small_clients=2,
    small_pause=0.05,
    sample_every=0.5,
    bucket=3.0,
)


@dataclass(frozen=True)
class ScalePlan:
    """``--scale``: how the gateway's cost grows with what it holds and serves, each size on a
    freshly started gateway, the sizes interleaved in each repetition."""

    repeat: int = 3
    # keys in the store; a third of this many seconds with no change, then this many with changes as
    # often as the refreshes allow (the gateway's CPU above idle is the refreshes'), then
    # ``key_window`` seconds of paced requests while a key changes once a second; creates through
    # KeyAdmin
    key_counts: tuple[int, ...] = (10, 10_000, 100_000)
    key_quiet_window: float = 4.5
    key_window: float = 3.0
    key_creates: int = 3
    # paced requests beside key changes: clients, each sending one small chat every ``paced_every`` s
    paced_clients: int = 4
    paced_every: float = 0.02
    # models the upstream lists; GET /api/tags in a closed loop for this long, per key
    model_counts: tuple[int, ...] = (10, 1000)
    listing_seconds: float = 1.5
    listing_concurrency: int = 4
    # usage rows (250 keys x 10 models at most, as many days as it takes); sequential calls per endpoint
    usage_rows: tuple[int, ...] = (1_000, 1_000_000)
    usage_calls: int = 2
    # upstreams behind the gateway; small chats at this concurrency for this long
    upstream_counts: tuple[int, ...] = (1, 3, 10)
    upstream_seconds: float = 1.5
    upstream_concurrency: int = 16
    # concurrent streams, as scenario (b)
    stream_counts: tuple[int, ...] = (100, 500, 1000)
    stream_tokens: int = 30
    token_interval: float = 0.1
    stream_ramp: float = 1.0
    warm_seconds: float = 0.3
    settle: float = 0.3
    # every measurement on a freshly started gateway, alone; otherwise every configuration is
    # started at once and kept for the whole run (seconds matter more at smoke size)
    fresh_gateway: bool = True

    def with_repeat(self, repeat: int | None) -> ScalePlan:
        return self if repeat is None else replace(self, repeat=repeat)


SCALE = ScalePlan()
SCALE_QUICK = ScalePlan(
    repeat=1,
    key_counts=(10, 200),
    key_quiet_window=0.5,
    key_window=0.5,
    key_creates=1,
    paced_clients=2,
    model_counts=(2, 50),
    listing_seconds=0.3,
    listing_concurrency=2,
    usage_rows=(100, 2_000),
    usage_calls=1,
    upstream_counts=(1, 2),
    upstream_seconds=0.3,
    upstream_concurrency=2,
    stream_counts=(4, 8),
    stream_tokens=5,
    token_interval=0.02,
    stream_ramp=0.02,
    warm_seconds=0.1,
    settle=0.05,
    fresh_gateway=False,
)
