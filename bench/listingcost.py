"""What a model listing costs the gateway: CPU per ``GET /api/tags`` (or ``/v1/models``) at a
given number of models, for a key with no model globs and for one with five, through one server
or a fleet, as a ratio against the same request sent straight to the fake Ollama in the same run.

The fake Ollama (``tests/fake_ollama``) runs in a child process of its own, so that its CPU can be
read; the gateway (``python -m gateway serve`` from ``--root``, so an older checkout can be
measured the same way) is pinned to one CPU, the fake and this driver to the other. Requests go
one at a time on one kept-alive connection; CPU is read from /proc before and after each round.

    python -m bench.listingcost                  # 10 and 1,000 models, one server and fleets of 3, 10
    python -m bench.listingcost --root /tmp/old  # the same, against another checkout's gateway
    python -m bench.listingcost --filter         # the filter alone, in-process: cold, changed, unchanged
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import procstat
from bench.children import Child
from bench.gateway import free_port
from bench.pinning import choose
from gateway.ollama.models import listed_model, parse_pattern
from gateway.policies.listing import ListingMemo, filtered

ROOT = Path(__file__).resolve().parent.parent
READY = "Uvicorn running on"
FAKE_READY = "fake ollama ports"
GLOBS = ("m00*", "acme/*", "hf.co/*/*", "llama3.2:*", "m09*")


def model_names(count: int, *, cloud: bool = False) -> list[str]:
    """``count`` distinct names in the spellings a real server lists (library, namespaced, other
    host), newest first; with ``cloud``, one in a hundred a cloud model (``:Cloud``, ``-cloud``)."""
    names = []
    for index in range(count):
        kind = index % 4
        if kind == 0:
            names.append(f"m{index:04d}:latest")
        elif kind == 1:
            names.append(f"acme/custom-{index:04d}:q4_k_m")
        elif kind == 2:
            names.append(f"hf.co/org{index % 7}/model-{index:04d}:Q4_K_M")
        elif cloud and index % 100 == 3:
            names.append(f"remote-{index:04d}:Cloud" if index % 200 == 3 else f"big-{index:04d}:120b-cloud")
        else:
            names.append(f"family{index % 13}-{index:04d}:{index % 5}b")
    return names


@dataclass(frozen=True)
class Cost:
    """CPU per request (ms), medians over rounds, with their ranges."""

    label: str
    gateway_ms: float
    gateway_range: tuple[float, float]
    direct_ms: float  # the fake Ollama's CPU for one listing asked directly
    added_ms: float  # median wall time through the gateway minus straight to the fake
    body_bytes: int

    @property
    def ratio(self) -> float:
        return self.gateway_ms / self.direct_ms if self.direct_ms else float("nan")

    def line(self) -> str:
        low, high = self.gateway_range
        return (
            f"{self.label:<34} gateway {self.gateway_ms:6.2f} ms CPU/req ({low:.2f}-{high:.2f})  "
            f"fake direct {self.direct_ms:6.2f} ms  ratio {self.ratio:5.2f}  added {self.added_ms:+6.2f} ms  "
            f"body {self.body_bytes} B"
        )


def _fake_main(servers: int, models: int) -> None:
    """In the child: ``servers`` fakes listing ``models`` models each, until stdin closes."""
    # Imported here: only the fake's own process needs the test suite.
    from tests.fake_ollama import FakeOllama

    fakes = [FakeOllama(model_names(models)) for _ in range(servers)]
    for fake in fakes:
        fake.start()
    print(FAKE_READY, " ".join(str(fake.port) for fake in fakes), flush=True)
    sys.stdin.read()
    for fake in fakes:
        fake.stop()


@contextmanager
def _fakes(servers: int, models: int, cpu: int | None) -> Iterator[tuple[int, list[int]]]:
    argv = [sys.executable, "-m", "bench.listingcost", "--fake", str(servers), str(models)]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith(FAKE_READY):
            raise RuntimeError(f"the fake Ollama did not start: {line!r}")
        yield process.pid, [int(port) for port in line[len(FAKE_READY) :].split()]
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _gateway_env(root: Path, workdir: Path, ports: Sequence[int]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    upstream = (
        {"GATEWAY_UPSTREAM_URL": urls[0]}
        if len(urls) == 1
        else {"GATEWAY_UPSTREAMS": ",".join(f"s{i}={url}" for i, url in enumerate(urls))}
    )
    env.update(
        {
            **upstream,
            "PYTHONPATH": str(root),
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_LOG_LEVEL": "info",
            "GATEWAY_DATABASE_URL": f"sqlite:///{workdir / 'keys.db'}",
            "GATEWAY_DEFAULT_RPM": "10000000",
            "GATEWAY_DEFAULT_CONCURRENCY": "100000",
        }
    )
    return env


def _key(env: dict[str, str], workdir: Path, globs: Sequence[str]) -> str:
    options = [option for glob in globs for option in ("--model", glob)]
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "create", f"list-{secrets.token_hex(3)}", *options, "--json"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return str(json.loads(done.stdout)["key"])


def _round(port: int, path: str, headers: dict[str, str], count: int, pid: int) -> tuple[float, float, int]:
    """CPU of ``pid`` per request (ms), median wall time per request (ms), body size."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    walls: list[float] = []
    size = 0
    try:
        before = procstat.cpu_ms(pid)
        for _ in range(count):
            started = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            walls.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}: {body[:200]!r}")
            size = len(body)
        spent = procstat.cpu_ms(pid) - before
    finally:
        connection.close()
    return spent / count, statistics.median(walls) * 1000, size


def listing_cost(
    models: int,
    *,
    globs: Sequence[str] = (),
    servers: int = 1,
    path: str = "/api/tags",
    requests: int = 200,
    rounds: int = 5,
    root: Path = ROOT,
) -> Cost:
    """Gateway CPU per listing request at ``models`` models (medians of ``rounds`` rounds of
    ``requests`` each), against the fake Ollama's CPU for the same request asked directly."""
    pinning = choose(True)
    pinning.apply_to_self()
    with tempfile.TemporaryDirectory(prefix="listingcost-") as tmp, _fakes(servers, models, pinning.load_cpu) as fake:
        fake_pid, ports = fake
        workdir = Path(tmp)
        env = _gateway_env(root, workdir, ports)
        auth = {"Authorization": f"Bearer {_key(env, workdir, globs)}"}
        port = free_port()
        argv = [*pinning.prefix(pinning.gateway_cpu), sys.executable, "-m", "gateway", "serve"]
        child = Child("gateway", argv, {**env, "GATEWAY_PORT": str(port)}, workdir)
        try:
            child.wait_for(READY, 30)
            _round(port, path, auth, 20, child.pid)  # warm-up: connections, caches
            _round(ports[0], path, {}, 20, fake_pid)
            gateway: list[float] = []
            direct: list[float] = []
            added: list[float] = []
            size = 0
            for _ in range(rounds):
                cpu, wall, size = _round(port, path, auth, requests, child.pid)
                direct_cpu, direct_wall, _ = _round(ports[0], path, {}, requests, fake_pid)
                gateway.append(cpu)
                direct.append(direct_cpu)
                added.append(wall - direct_wall)
        finally:
            child.stop()
    where = "1 server" if servers == 1 else f"fleet of {servers}"
    label = f"{path} {models} models, {len(globs) or 'no'} globs, {where}"
    return Cost(
        label,
        statistics.median(gateway),
        (min(gateway), max(gateway)),
        statistics.median(direct),
        statistics.median(added),
        size,
    )


def filter_cost(models: int, globs: Sequence[str] = GLOBS, *, repeats: int = 50) -> dict[str, float]:
    """CPU (ms, median of ``repeats``) the gateway's listing filter spends on one ``/api/tags`` of
    ``models`` models, in this process: names never seen (parsed), a listing that changed (names
    known), and one that did not (answered from memory)."""
    from tests.fake_ollama import FakeOllama  # as in _fake_main

    with FakeOllama(model_names(models)) as fake:
        connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=30)
        connection.request("GET", "/api/tags")
        raw = connection.getresponse().read()
        connection.close()
    sight = (tuple(parse_pattern(glob) for glob in globs), False)
    memo = ListingMemo()
    memo.filtered(raw, sight)

    def first() -> None:
        listed_model.cache_clear()
        filtered(raw, sight)

    def timed(work: Callable[[], object]) -> float:
        spent = []
        for _ in range(repeats):
            before = time.process_time()
            work()
            spent.append((time.process_time() - before) * 1000)
        return statistics.median(spent)

    return {
        "names never seen": timed(first),
        "listing changed": timed(lambda: filtered(raw, sight)),
        "listing unchanged": timed(lambda: memo.filtered(bytes(bytearray(raw)), sight)),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.listingcost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose gateway is measured")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", type=int, nargs="*", default=[10, 1000])
    parser.add_argument("--servers", type=int, nargs="*", default=[1, 3, 10])
    parser.add_argument("--path", nargs="*", default=["/api/tags"])
    parser.add_argument("--filter", action="store_true", help="only the filter's own CPU, in this process")
    parser.add_argument("--fake", type=int, nargs=2, metavar=("SERVERS", "MODELS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fake:
        _fake_main(*args.fake)
        return
    if args.filter:
        for models in args.models:
            for globs in ((), GLOBS):
                costs = filter_cost(models, globs)
                figures = ", ".join(f"{what} {ms:.3f} ms" for what, ms in costs.items())
                print(f"filter, {models} models, {len(globs) or 'no'} globs: {figures}", flush=True)
        return
    for path in args.path:
        for servers in args.servers:
            for models in args.models if servers == 1 else [max(args.models)]:
                for globs in ((), GLOBS):
                    cost = listing_cost(
                        models,
                        globs=globs,
                        servers=servers,
                        path=path,
                        requests=args.requests,
                        rounds=args.rounds,
                        root=args.root,
                    )
                    print(cost.line(), flush=True)


if __name__ == "__main__":
    main()
