"""Instructions, not seconds: what the gateway's own code costs per small request and per relayed
chunk, counted by valgrind's callgrind in the gateway's process.

CPU time on a shared two-core virtual machine moves by a third from one run to the next (the same
code measured 72 and 105 ms per 1000 chunks at 100 streams an hour apart), which hides a change of
10 %. Instructions executed in user space do not depend on what else the machine runs: two runs
of the same code agree within about 1 %, so two checkouts can be compared one after the other.
What they leave out is the kernel's share (system calls, the loopback's TCP) and what cold caches
add; CPU time (``python -m bench``) stays the figure of record.

The gateway runs under callgrind with instrumentation off until the measured window, so it starts
in seconds; it is slowed ~15x inside the window, which the load sizes below allow for (a window
is a few seconds). Run it in each checkout to compare them:

    python -m bench.instructions                  # this checkout
    (cd /tmp/other && python -m bench.instructions)
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.client import Connection, Exchange, close_all
from bench.fleet import running_upstreams
from bench.gateway import running_gateway
from bench.load import streams
from bench.meter import Meter
from bench.payloads import Target, small_chat, stream_chat
from bench.pinning import Pinning
from bench.stamps import Format


@dataclass(frozen=True)
class Load:
    clients: int  # small requests: clients, each sending ``per_client`` after ``warm`` each
    per_client: int
    warm: int
    streams: int  # streams of ``tokens`` tokens every ``interval`` seconds, as scenario (b)'s
    tokens: int
    interval: float


# A size callgrind keeps up with; --quick: enough to run every step (the test suite runs it).
FULL = Load(clients=16, per_client=50, warm=5, streams=20, tokens=40, interval=0.1)
QUICK = Load(clients=2, per_client=3, warm=1, streams=2, tokens=3, interval=0.02)


@dataclass(frozen=True)
class _UnderCallgrind(Pinning):
    """Starts the gateway under callgrind (instrumentation off) instead of pinning it."""

    out: str = ""

    def prefix(self, cpu: int | None) -> list[str]:
        return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self.out}"]


class Counter:
    def __init__(self, pid: int, out: Path) -> None:
        self._pid = pid
        self._out = out

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self._pid)], capture_output=True, check=True, timeout=30)

    def begin(self) -> None:
        self._control("--instr=on")
        self._control("--zero")

    def end(self) -> int:
        """Instructions since ``begin``: each dump is a file of its own, its total in a header."""
        before = set(self._out.parent.glob(self._out.name + ".*"))
        self._control("--dump")
        self._control("--instr=off")
        (dump,) = set(self._out.parent.glob(self._out.name + ".*")) - before
        for line in dump.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
        raise RuntimeError(f"{dump}: no totals line")


async def _small(target: Target, path: str, counter: Counter, load: Load) -> float:
    request = small_chat(target, path)
    connections = [await Connection.open(target.host, target.port, 10) for _ in range(load.clients)]

    async def client(connection: Connection, count: int) -> None:
        for _ in range(count):
            exchange = Exchange()
            connection.send(request, exchange)
            async with asyncio.timeout(30):
                await exchange.done
            if exchange.status != 200:
                raise RuntimeError(f"{path}: status {exchange.status}")

    try:
        await asyncio.gather(*(client(connection, load.warm) for connection in connections))
        counter.begin()
        await asyncio.gather(*(client(connection, load.per_client) for connection in connections))
        return counter.end() / (load.clients * load.per_client)
    finally:
        await close_all(connections)


async def _streams(target: Target, fmt: Format, counter: Counter, pid: int, load: Load) -> float:
    requests = [stream_chat(target, fmt, load.tokens, load.interval) for _ in range(load.streams)]
    counter.begin()
    result = await streams(target, fmt, requests, load.tokens, 1.0, Meter({"gateway": [pid]}), 60.0)
    instructions = counter.end()
    if result.lost or result.refused or not result.chunks:
        raise RuntimeError(f"{fmt.value}: {result.lost} chunks lost, {result.refused} streams refused")
    return instructions / result.chunks


async def _measure(target: Target, counter: Counter, pid: int, load: Load) -> dict[str, float]:
    figures = {}
    for path in ("/api/chat", "/v1/chat/completions"):
        figures[f"per small request, {path}"] = await _small(target, path, counter, load)
    for fmt in (Format.NDJSON, Format.SSE):
        name = f"per relayed chunk, {load.streams} x {fmt.value} ({load.tokens} tokens, requests included)"
        figures[name] = await _streams(target, fmt, counter, pid, load)
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke size: every step, tiny loads")
    load = QUICK if parser.parse_args(argv).quick else FULL
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind (with callgrind_control) is not installed")
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as folder:
        workdir = Path(folder)
        out = workdir / "callgrind.out"
        with (
            running_upstreams(1, workdir, Pinning(None, None, "not pinned"), 900.0, None) as (upstream,),
            running_gateway(
                {"GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{upstream.port}"},
                workdir,
                _UnderCallgrind(None, None, "under callgrind", out=str(out)),
                {},
                None,
            ) as server,
        ):
            target = Target("gateway", "127.0.0.1", server.port, server.key)
            figures = asyncio.run(_measure(target, Counter(server.pid, out), server.pid, load))
    for name, value in figures.items():
        print(f"instructions {name}: {value:,.0f}")


if __name__ == "__main__":
    main()
