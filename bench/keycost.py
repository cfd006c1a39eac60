"""What a key change costs the server as the store grows: CPU per change the keyring applies, CPU
per ``KeyAdmin.create``, and the resident memory of the loaded keys.

Run pinned to one core, one store size per process (RSS is the process's)::

    taskset -c 1 python -m bench.keycost 100000

It knows the store only through the public key API (a keyring, ``KeyAdmin``); the keys are
written straight into a fresh database file, which is faster than creating them one by one.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.keys import apikey
from gateway.keys.keyring import Keyring
from gateway.keys.management import KeyAdmin, KeyChange
from gateway.keys.store import open_keystore

ROUNDS = 15


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _fill(url: str, path: Path, count: int) -> None:
    open_keystore(url).close()  # creates and migrates the file
    rows = []
    for number in range(count):
        new = apikey.generate()
        rows.append((new.key_id, f"key-{number:06d}", new.digest, time.time(), '["inference", "read"]', "[]"))
    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT OR IGNORE INTO keys (id, name, digest, created_at, scopes, models) VALUES (?, ?, ?, ?, ?, ?)", rows
        )
    connection.close()


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
    }


async def _measure(url: str) -> dict[str, object]:
    before = _rss_mb()
    keyring = Keyring(lambda: open_keystore(url), refresh_interval=3600)
    await keyring.start()
    loaded = _rss_mb()
    store = open_keystore(url)
    admin = KeyAdmin(store)
    try:
        victim = admin.get("key-000001").id
        applied: list[float] = []
        creates: list[float] = []
        for round_ in range(ROUNDS):
            admin.update(victim, KeyChange(limits={"rpm": round_ + 1}))
            started = time.process_time()
            await keyring.catch_up()
            applied.append((time.process_time() - started) * 1000)
            assert keyring.get(victim).limits.rpm == round_ + 1  # type: ignore[union-attr]
            started = time.process_time()
            admin.create(f"new-{round_}", KeyChange())
            creates.append((time.process_time() - started) * 1000)
    finally:
        store.close()
        await keyring.close()
    return {
        "refresh_ms_cpu": _summary(applied),
        "create_ms_cpu": _summary(creates),
        "rss_mb_before_load": round(before, 1),
        "rss_mb_loaded": round(loaded, 1),
    }


def main() -> None:
    if sys.argv[1:2] == ["--fill"]:
        _fill(f"sqlite:///{sys.argv[2]}", Path(sys.argv[2]), int(sys.argv[3]))
        return
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "keys.db"
        url = f"sqlite:///{path}"
        # In a process of its own, so its garbage is not counted in this one's memory.
        subprocess.run([sys.executable, "-m", "bench.keycost", "--fill", str(path), str(count)], check=True)
        result = asyncio.run(_measure(url))
    print(json.dumps({"keys": count, **result}))


if __name__ == "__main__":
    main()
