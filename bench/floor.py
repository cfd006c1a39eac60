"""The gateway's CPU against two floors measured in the same run: nginx, and a bare TCP relay.

CPU time on this kind of machine moves with whatever else its host runs: the same gateway code
measured 58-64 ms per 1000 chunks at 100 streams one morning and 78-142 ms that afternoon, and a
bare relay under the same load 28.8 ms on a quiet day and 40-57 ms that afternoon. A figure in
milliseconds says little unless something measured beside it moved too. Here the same load goes,
in turn, through

- ``gateway``: the gateway, as ``python -m bench`` runs it;
- ``nginx``: one nginx process (``master_process off``), upstream connections kept alive,
  nothing buffered: the proxy the CPU targets were set against (skipped when no nginx binary is
  found: the Makefile unpacks Debian's into the virtualenv);
- ``relay``: ``bench.tcprelay``, bytes both ways on uvloop with nothing parsed: what relaying
  costs in Python on this event loop and kernel, before any HTTP (it opens an upstream connection
  per client, when the client's first bytes arrive);

each freshly started, pinned to the same CPU (the load and the fast upstream on the other), in an
order that turns every repetition; the ratios pair each repetition's runs. Each side is warmed
before its windows: small requests on both paths, then one burst of as many short streams as the
windows open, so pools and heaps are filled and both formats measure a side that has carried
such a burst before (scenario (b) of ``python -m bench`` measures a fresh gateway's first burst
instead, which costs it more: bench/FINDINGS.md). Figures: CPU per small request (``/api/chat``,
16 clients, kept-alive), and per 1000 relayed chunks at 100 streams of 40 tokens (NDJSON and
SSE), as scenarios (a) and (b) measure them.

    python -m bench.floor                 # 5 repetitions, about 5 minutes
    python -m bench.floor --repeat 9 --out floor.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from bench.children import Child
from bench.context import SMALL_PATHS
from bench.fleet import running_upstreams
from bench.gateway import ROOT, GatewayServer, free_port, python_path
from bench.load import Streams, closed_loop, streams
from bench.meter import Meter
from bench.payloads import Target, small_chat, stream_chat
from bench.pinning import Pinning, choose
from bench.report import DASH
from bench.stamps import Format
from bench.stats import spread

GATEWAY, NGINX, RELAY = "gateway", "nginx", "relay"
T = TypeVar("T")
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class FloorPlan:
    repeat: int
    clients: int  # small requests: kept-alive clients, for ``seconds``
    seconds: float
    streams: int  # streams of ``tokens`` tokens every ``interval`` s, started over ``ramp`` s
    tokens: int
    interval: float
    ramp: float
    warm: float  # seconds of small requests on each path before a side's window


FULL = FloorPlan(repeat=5, clients=16, seconds=3.0, streams=100, tokens=40, interval=0.1, ramp=1.0, warm=0.3)
QUICK = FloorPlan(repeat=1, clients=2, seconds=0.3, streams=3, tokens=3, interval=0.02, ramp=0.02, warm=0.05)

FIGURES = ("small_cpu_ms_per_request", "ndjson_cpu_ms_per_1k_chunks", "sse_cpu_ms_per_1k_chunks")


def labels(plan: FloorPlan) -> dict[str, str]:
    """Each figure, said in words, in the order printed."""
    streams = f"CPU per 1000 chunks, {plan.streams} streams of {plan.tokens} tokens"
    return {
        "small_cpu_ms_per_request": f"CPU per small request, /api/chat, c={plan.clients} (ms)",
        "ndjson_cpu_ms_per_1k_chunks": f"{streams}, NDJSON (ms)",
        "sse_cpu_ms_per_1k_chunks": f"{streams}, SSE (ms)",
    }


class Side(Protocol):
    """A process the load goes through, started fresh for each run (``GatewayServer`` is one)."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def pid(self) -> int: ...

    @property
    def port(self) -> int: ...


class _ChildSide:
    """A process of the harness's own, started by ``argv_for(port)`` and ready once it listens."""

    def __init__(self, name: str, argv_for: Callable[[int], list[str]], workdir: Path, log: Path | None) -> None:
        self.name = name
        self._argv_for = argv_for
        self._workdir = workdir
        self._log = log
        self._child: Child | None = None
        self._port = 0

    def start(self) -> None:
        self.stop()
        self._port = free_port()
        env = {"PYTHONPATH": python_path(), "PATH": "/usr/bin:/bin"}
        self._child = Child(self.name, self._argv_for(self._port), env, self._workdir, self._log)
        _wait_listening(self._child, self._port)

    def stop(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop()

    @property
    def pid(self) -> int:
        if self._child is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._child.pid

    @property
    def port(self) -> int:
        return self._port


def _wait_listening(child: Child, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            pass
        if child.process.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"{child.name} did not start listening on {port}:\n{child.output()[-4000:]}")


def nginx_binary() -> str | None:
    """The Makefile's nginx (Debian's, unpacked into the virtualenv), else one on PATH."""
    unpacked = ROOT / ".venv" / "nginx" / "usr" / "sbin" / "nginx"
    return str(unpacked) if unpacked.exists() else shutil.which("nginx")


def nginx_config(folder: Path, port: int, upstream: int) -> str:
    """One process, upstream connections kept alive, nothing buffered: a streaming proxy's setup."""
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body;
  proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fastcgi;
  uwsgi_temp_path {folder}/uwsgi;
  scgi_temp_path {folder}/scgi;
  keepalive_requests 10000000;
  upstream fast {{ server 127.0.0.1:{upstream}; keepalive 1024; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://fast;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
"""


def _nginx_argv(binary: str, folder: Path, upstream: int, pinning: Pinning) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        (folder / "logs").mkdir(parents=True, exist_ok=True)  # opened before the config is read
        config = folder / "nginx.conf"
        config.write_text(nginx_config(folder, port, upstream))
        return [*pinning.prefix(pinning.gateway_cpu), binary, "-p", str(folder), "-c", str(config)]

    return argv


def _relay_argv(upstream: int, pinning: Pinning) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        relay = [sys.executable, "-m", "bench.tcprelay", "--port", str(port), "--upstream", str(upstream)]
        return [*pinning.prefix(pinning.gateway_cpu), *relay]

    return argv


def order(sides: Sequence[T], rep: int) -> list[T]:
    """Every side first once in turn, so none always runs on the freshest machine state."""
    turn = rep % len(sides)
    return [*sides[turn:], *sides[:turn]]


async def _measure(target: Target, pid: int, plan: FloorPlan) -> dict[str, float]:
    def meter() -> Meter:
        return Meter({"side": [pid]}, precise=True)

    for path in SMALL_PATHS:
        await closed_loop(target, small_chat(target, path), 4, plan.warm, meter())
    # A burst of short streams, as many as the windows open: connections pooled, heap grown.
    burst = [stream_chat(target, Format.NDJSON, 2, 0.01) for _ in range(plan.streams)]
    _whole(target, Format.NDJSON, await streams(target, Format.NDJSON, burst, 2, plan.ramp, meter(), 30))
    figures: dict[str, float] = {}
    window = meter()
    small = await closed_loop(target, small_chat(target, "/api/chat"), plan.clients, plan.seconds, window)
    if small.errors or not small.latencies_ns:
        raise RuntimeError(f"{target.name}: {small.errors} small requests failed")
    figures["small_cpu_ms_per_request"] = window.result.cpu_ms["side"] / len(small.latencies_ns)
    for fmt in Format:
        requests = [stream_chat(target, fmt, plan.tokens, plan.interval) for _ in range(plan.streams)]
        window = meter()
        cap = plan.ramp + plan.tokens * plan.interval + 30
        result = _whole(target, fmt, await streams(target, fmt, requests, plan.tokens, plan.ramp, window, cap))
        figures[f"{fmt.value}_cpu_ms_per_1k_chunks"] = window.result.cpu_ms["side"] * 1000 / result.chunks
    return figures


def _whole(target: Target, fmt: Format, result: Streams) -> Streams:
    """``result``, if every stream arrived whole and in order; else the run stops, saying how."""
    failures = {
        "lost": result.lost,
        "out of order": result.out_of_order,
        "refused": result.refused,
        "cut": result.cut,
        "unfinished": result.unfinished,
    }
    if any(failures.values()) or not result.chunks:
        counts = ", ".join(f"{count} {what}" for what, count in failures.items())
        raise RuntimeError(f"{target.name}, {fmt.value}: streams did not all arrive whole ({counts})")
    return result


Runs = dict[str, list[dict[str, float]]]  # side -> one dict of figures per repetition


async def _run(sides: Sequence[Side], key: str | None, plan: FloorPlan) -> Runs:
    runs: Runs = {side.name: [] for side in sides}
    for rep in range(plan.repeat):
        for side in order(sides, rep):
            await asyncio.to_thread(side.start)
            try:
                target = Target(side.name, "127.0.0.1", side.port, key)
                runs[side.name].append(await _measure(target, side.pid, plan))
            finally:
                await asyncio.to_thread(side.stop)
    return runs


def summary(runs: Runs) -> dict[str, object]:
    """Each side's figures (median, range) and the gateway's over each floor, paired by repetition."""
    out: dict[str, object] = {}
    for figure in FIGURES:
        row: dict[str, object] = {}
        for side, reps in runs.items():
            values = spread([rep[figure] for rep in reps])
            row[side] = values.as_json() if values is not None else None
        for floor in (NGINX, RELAY):
            if floor in runs and GATEWAY in runs:
                pairs = zip(runs[GATEWAY], runs[floor], strict=True)
                ratio = spread([g[figure] / f[figure] if f[figure] > 0 else None for g, f in pairs])
                row[f"gateway_over_{floor}"] = ratio.as_json() if ratio is not None else None
        out[figure] = row
    return out


def table(result: dict[str, object], sides: Sequence[str], plan: FloorPlan) -> str:
    floors = [floor for floor in (NGINX, RELAY) if floor in sides]
    head = ["figure", *sides, *(f"gateway \u00f7 {floor}" for floor in floors)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(value: object, digits: int) -> str:
        if not isinstance(value, dict):
            return DASH
        median, low, high = value["median"], value["min"], value["max"]
        return f"{median:.{digits}f} ({low:.{digits}f}{DASH}{high:.{digits}f})"

    for figure, label in labels(plan).items():
        row = result[figure]
        assert isinstance(row, dict)
        digits = 3 if figure.startswith("small") else 1
        cells = [cell(row[side], digits) for side in sides]
        cells += [cell(row[f"gateway_over_{floor}"], 2) for floor in floors]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


@contextmanager
def _sides(
    workdir: Path, pinning: Pinning, log: Path | None, upstream: int, nginx: bool
) -> Iterator[tuple[list[Side], str | None]]:
    """The sides, and the gateway's key (sent to every side alike: the fast upstream ignores it)."""
    with ExitStack() as stack:
        upstream_url = {"GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{upstream}"}
        server = GatewayServer(upstream_url, workdir, pinning, {}, log, GATEWAY)
        sides: list[Side] = [server]
        binary = nginx_binary() if nginx else None
        if binary is not None:
            sides.append(_ChildSide(NGINX, _nginx_argv(binary, workdir / "nginx", upstream, pinning), workdir, log))
        sides.append(_ChildSide(RELAY, _relay_argv(upstream, pinning), workdir, log))
        for side in sides:
            stack.callback(side.stop)
        yield sides, server.key


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, help="repetitions (default 5; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="smoke size: every step, tiny loads")
    parser.add_argument("--no-nginx", action="store_true", help="leave nginx out even where it is found")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the sides and the load to CPUs")
    parser.add_argument("--out", type=Path, help="write the runs and the summary here as JSON")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        plan = FloorPlan(**{**plan.__dict__, "repeat": args.repeat})
    pinning = choose(not args.no_pin)
    pinning.apply_to_self()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as folder:
        workdir = Path(folder)
        log = args.out.with_suffix(".log") if args.out is not None else None
        with (
            running_upstreams(1, workdir, pinning, 3600.0, log) as (upstream,),
            _sides(workdir, pinning, log, upstream.port, not args.no_nginx) as (sides, key),
        ):
            runs = asyncio.run(_run(sides, key, plan))
    result = summary(runs)
    names = list(runs)
    print(f"{pinning.note}; {plan.repeat} repetitions in {time.monotonic() - started:.0f} s")
    print(table(result, names, plan))
    if args.out is not None:
        args.out.write_text(json.dumps({"plan": plan.__dict__, "runs": runs, "summary": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
