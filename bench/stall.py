"""Scenario (e): what one large JSON body costs everyone else.

Parsing JSON holds the GIL, so a body the gateway must read (to check its model and count its
tokens) can stall the event loop, and with it every other client. While one client sends such a
body, two others run beside it on their own connections: a stream with a token every 50 ms
(``/api/chat``) and a ``/healthz`` poll (a request every 10 ms after the last answer). The figures
are the largest relay delay of any token sent while the body was being handled (receive time -
the upstream's send time, so a stall shows in full) and the slowest ``/healthz`` answer.

The bodies: a flat object with N members after the fields a chat needs (``"k0":0,"k1":0,...``:
parse cost per byte at its worst), sent to ``/api/chat`` with ``stream:false`` or to
``/v1/chat/completions`` with ``stream:true`` (which the gateway rewrites to ask for usage), and a
chat with one large base64 image (bytes rather than members). The fast upstream answers them 400
(it reads only the first MiB of a JSON body): what is measured is the gateway's handling.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from dataclasses import dataclass

from bench.client import Buffered, Connection, Exchange, close_all
from bench.load import OPEN_TIMEOUT
from bench.meter import Meter
from bench.payloads import Target, stream_chat
from bench.stamps import Format, StampReader

STREAM_INTERVAL = 0.05
POLL_PAUSE = 0.01
# After the attack's answer: a stall that outlasts it still counts.
TAIL = 0.5


@dataclass(frozen=True)
class Attack:
    path: str
    body: bytes
    method: str = "POST"  # GET: a request whose answer is the slow part (the scale scenario's usage queries)


@functools.lru_cache(maxsize=4)
def many_members(members: int, *, openai: bool) -> Attack:
    """A chat body with ``members`` extra top-level members (about 12 bytes each at a million)."""
    head: dict[str, object] = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": openai}
    if openai:
        # Where the fast upstream reads the body whole (small sizes), its stream is one token.
        head |= {"max_tokens": 1, "bench": {"interval_ms": 1}}
    prefix = json.dumps(head, separators=(",", ":")).encode()[:-1]
    members_text = b",".join(b'"k%d":0' % number for number in range(members))
    path = "/v1/chat/completions" if openai else "/api/chat"
    return Attack(path, prefix + b"," + members_text + b"}")


@functools.lru_cache(maxsize=2)
def large_image(size: int) -> Attack:
    """A chat with one base64 image of ``size`` bytes: few members, many bytes."""
    message = b'{"role":"user","content":"what is this?","images":["' + b"QUJD" * (size // 4) + b'"]}'
    return Attack("/api/chat", b'{"model":"bench","stream":false,"messages":[' + message + b"]}")


@dataclass
class Stall:
    stream_delay_max_ns: int | None
    stream_chunks: int  # tokens sent while the attack was handled
    healthz_max_ns: int | None
    healthz_polls: int
    attack_status: int
    attack_ns: int  # the attack sent -> its answer complete
    error: str | None


class _Stream(Exchange):
    def __init__(self) -> None:
        super().__init__()
        self.reader = StampReader(Format.NDJSON)
        self.first = asyncio.get_running_loop().create_future()

    def on_body(self, data: bytes, received_ns: int) -> None:
        self.reader.feed(data, received_ns)
        if self.reader.tokens and not self.first.done():
            self.first.set_result(None)


async def _poll(target: Target, connection: Connection, stop: asyncio.Event, polls: list[tuple[int, int]]) -> None:
    """(sent, latency) of each /healthz poll until ``stop``."""
    request = target.request("GET", "/healthz")
    while not stop.is_set():
        exchange = Buffered()
        connection.send(request, exchange)
        await exchange.done
        if exchange.error is not None:
            return
        polls.append((exchange.sent_ns, exchange.end_ns - exchange.sent_ns))
        await asyncio.sleep(POLL_PAUSE)


async def stall(target: Target, attack: Attack, meter: Meter, cap: float) -> Stall:
    """Send ``attack`` while a 50 ms stream and a /healthz poll run beside it."""
    connections = [await Connection.open(target.host, target.port, OPEN_TIMEOUT) for _ in range(3)]
    streamed, polled, attacked = connections
    # The request bytes are built before the window: building 50 MB is the harness's cost.
    attack_request = target.request(attack.method, attack.path, attack.body)
    stream = _Stream()
    polls: list[tuple[int, int]] = []
    stop = asyncio.Event()
    answer = Exchange()
    error: str | None = None
    started_ns = ended_ns = 0
    try:
        async with asyncio.timeout(cap):
            tokens = int(cap / STREAM_INTERVAL) + 1
            streamed.send(stream_chat(target, Format.NDJSON, tokens, STREAM_INTERVAL), stream)
            await stream.first
            poller = asyncio.get_running_loop().create_task(_poll(target, polled, stop, polls))
            await asyncio.sleep(0.2)  # the poll and the stream settle before the window
            async with meter:
                started_ns = time.monotonic_ns()
                attacked.send(attack_request, answer)
                await answer.done
                ended_ns = time.monotonic_ns()
                await asyncio.sleep(TAIL)
            stop.set()
            await poller
    except TimeoutError:
        error = f"not over within {cap:.0f} s"
    finally:
        stop.set()
        await close_all(connections)
    reader = stream.reader
    until = (ended_ns or time.monotonic_ns()) + int(TAIL * 1e9)
    during = [delay for sent, delay in zip(reader.sent_ns, reader.delays_ns, strict=True) if started_ns <= sent < until]
    latencies = [latency for sent, latency in polls if started_ns <= sent < until]
    return Stall(
        stream_delay_max_ns=max(during, default=None),
        stream_chunks=len(during),
        healthz_max_ns=max(latencies, default=None),
        healthz_polls=len(latencies),
        attack_status=answer.status,
        attack_ns=(ended_ns - started_ns) if ended_ns else 0,
        error=error or answer.error,
    )
