"""One soak stream: its drawn shape, its request, reading it, and what it proves when it ends.

A stream runs to its end, is cut by the upstream after K tokens (FIN or RST), or is hung up on
by the client after H tokens. Whatever happens, the tokens that were sent before the stream
ended must all arrive, once each and in order; a cut stream must end with exactly one error
record in its dialect and a terminated chunked body; a normal one with its final record.
"""

from __future__ import annotations

import enum
import json
import random
import time
from dataclasses import dataclass, field

from bench.client import Connection, Exchange
from bench.payloads import Target, stream_chat
from bench.plan import SoakPlan
from bench.stamps import Format, StampReader

LOST_MESSAGE = "upstream connection lost"
LOST_CODE = "upstream_connection_lost"


class Kind(enum.Enum):
    NORMAL = "normal"
    CUT_FIN = "cut_fin"  # the upstream closes its connection mid-stream
    CUT_RST = "cut_rst"  # the upstream resets its connection mid-stream
    HANG_UP = "hang_up"  # the client closes its connection mid-stream

    @property
    def cut(self) -> bool:
        return self in (Kind.CUT_FIN, Kind.CUT_RST)


@dataclass(frozen=True)
class Shape:
    kind: Kind
    fmt: Format
    tokens: int
    stop_after: int  # tokens before the cut or the hang-up; 0 for a normal stream
    fresh: bool  # on a new connection even if the last one could carry it
    tag: str  # names the stream at the upstream, which notes when a running stream's connection closes

    def request(self, target: Target, interval: float) -> bytes:
        cut = {Kind.CUT_FIN: "fin", Kind.CUT_RST: "rst"}.get(self.kind, "")
        after = self.stop_after if cut else 0
        return stream_chat(target, self.fmt, self.tokens, interval, self.tag, cut_after=after, cut=cut)


def draw(rng: random.Random, plan: SoakPlan, tag: str) -> Shape:
    tokens = max(rng.randint(*plan.tokens), 2)
    roll = rng.random()
    if roll < plan.cut_fin:
        kind = Kind.CUT_FIN
    elif roll < plan.cut_fin + plan.cut_rst:
        kind = Kind.CUT_RST
    elif roll < plan.cut_fin + plan.cut_rst + plan.hang_up:
        kind = Kind.HANG_UP
    else:
        kind = Kind.NORMAL
    stop_after = 0 if kind is Kind.NORMAL else rng.randint(1, tokens - 1)
    fmt = Format.NDJSON if rng.random() < 0.5 else Format.SSE
    return Shape(kind, fmt, tokens, stop_after, rng.random() < plan.fresh_connection, tag)


class SoakStream(Exchange):
    """Reads one stream's records; a hang-up stream closes its connection after H tokens."""

    def __init__(self, shape: Shape, connection: Connection) -> None:
        super().__init__()
        self.shape = shape
        self.reader = StampReader(shape.fmt)
        self.headers = []
        self._connection = connection
        self.hung_up_ns = 0  # when the client closed the connection; 0 if it did not
        self.stalled = False  # no end within the stream's time

    def on_body(self, data: bytes, received_ns: int) -> None:
        self.reader.feed(data, received_ns)
        if self.shape.kind is Kind.HANG_UP and not self.hung_up_ns and self.reader.tokens >= self.shape.stop_after:
            self.hung_up_ns = time.monotonic_ns()
            self._connection.close()
            self._finish()

    @property
    def terminated(self) -> bool:
        """The response ended as HTTP says it must: for chunked, the zero-length chunk came."""
        return self.end_ns != 0 and self.error is None

    @property
    def reusable(self) -> bool:
        """Its connection may carry the next request."""
        return self.terminated and not self.hung_up_ns and keeps_alive(self)

    def error_line(self) -> bool:
        """The stream's last record is the one error record a lost upstream connection gives."""
        reader = self.reader
        if reader.errors != 1 or reader.ended or reader.partial:
            return False
        record = reader.last
        try:
            if self.shape.fmt is Format.NDJSON:
                return bool(json.loads(record) == {"error": LOST_MESSAGE})
            if not record.startswith(b"data: "):
                return False
            error = json.loads(record[len(b"data: ") :]).get("error")
        except ValueError:
            return False
        return isinstance(error, dict) and error.get("code") == LOST_CODE


def keeps_alive(exchange: Exchange) -> bool:
    """The server did not announce that it closes the connection after this response."""
    return not any(name == b"connection" and value.lower() == b"close" for name, value in exchange.headers or [])


def _sequence(seqs: list[int], expected: int) -> tuple[int, int, int]:
    """(lost, out of order, duplicated) for tokens 0..expected-1 arriving as ``seqs``."""
    seen: set[int] = set()
    late = duplicated = 0
    highest = -1
    for seq in seqs:
        if seq in seen:
            duplicated += 1
            continue
        if seq < highest:
            late += 1
        seen.add(seq)
        highest = max(highest, seq)
    lost = sum(1 for seq in range(expected) if seq not in seen)
    return lost, late, duplicated


@dataclass
class Tally:
    """What every ended stream proved, summed."""

    ended: dict[str, int] = field(default_factory=lambda: {kind.value: 0 for kind in Kind})
    chunks: int = 0
    lost: int = 0
    out_of_order: int = 0
    duplicated: int = 0
    completed: int = 0  # normal streams: every token, the final record, terminated
    without_end: int = 0  # normal streams without their final record
    not_terminated: int = 0  # normal streams whose response did not end cleanly
    cut_error_line: int = 0
    cut_without_error_line: int = 0
    cut_terminated: int = 0
    cut_not_terminated: int = 0
    stray_error_lines: int = 0  # error records in streams nobody cut
    hung_up: int = 0
    hang_up_missed: int = 0  # hang-up streams that ended before the client could hang up
    refused: int = 0  # status other than 200
    statuses: dict[str, int] = field(default_factory=dict)
    broken: int = 0  # the client connection broke before the response ended, not by a hang-up
    stalled: int = 0  # no end within the stream's time
    connect_failures: int = 0
    failed: int = 0  # streams that did not end as their kind must, for whatever reason

    def add(self, stream: SoakStream) -> None:
        self.failed += not self._check(stream)

    def _check(self, stream: SoakStream) -> bool:
        """Count what ``stream`` proved; True if it ended exactly as its kind must."""
        shape, reader = stream.shape, stream.reader
        self.ended[shape.kind.value] += 1
        status = str(stream.status or "none")
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if stream.status != 200:
            self.refused += 1
            return False
        self.chunks += reader.tokens
        if stream.hung_up_ns:
            self.hung_up += 1
            expected = max(reader.seqs, default=-1) + 1  # what the upstream sent before the hang-up
        elif shape.kind.cut:
            expected = shape.stop_after
        else:
            expected = shape.tokens
            self.hang_up_missed += shape.kind is Kind.HANG_UP
        lost, late, duplicated = _sequence(reader.seqs, expected)
        self.lost += lost
        self.out_of_order += late
        self.duplicated += duplicated
        self.stalled += stream.stalled
        whole = not (lost or late or duplicated or stream.stalled)
        if shape.kind.cut:
            # A cut stream whose client connection broke is one without termination.
            line = stream.error_line()
            self.cut_error_line += line
            self.cut_without_error_line += not line
            self.cut_terminated += stream.terminated
            self.cut_not_terminated += not stream.terminated
            return whole and line and stream.terminated
        broken = stream.error is not None and not stream.stalled and not stream.hung_up_ns
        self.broken += broken
        self.stray_error_lines += reader.errors > 0
        if stream.hung_up_ns:
            return whole and not reader.errors
        self.without_end += not reader.ended
        self.not_terminated += not stream.terminated
        completed = whole and reader.ended and stream.terminated and not reader.errors
        if shape.kind is Kind.HANG_UP:
            return False  # ended before the client could hang up
        self.completed += completed
        return completed
