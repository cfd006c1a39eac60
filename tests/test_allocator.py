"""glibc malloc thresholds: taken in a real process, left alone where an operator set their own."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import allocator, server

ROOT = Path(__file__).resolve().parent.parent

# Prints how many blocks glibc served with mmap for one 600 KiB bytes object, in a fresh process
# (glibc's dynamic threshold starts at 128 KiB there, so by default such a block is mmapped).
_PROBE = """
import ctypes, sys
from gateway.allocator import keep_large_blocks

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
applied = keep_large_blocks() if sys.argv[1] == "tuned" else None
before = libc.mallinfo2().hblks
block = bytes(600 * 1024)
print(applied, libc.mallinfo2().hblks - before)
"""


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        return False


def _probe(mode: str, **env: str) -> list[str]:
    clean = {name: value for name, value in os.environ.items() if name != "GLIBC_TUNABLES"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.split()


@pytest.mark.skipif(not _glibc(), reason="the thresholds are glibc's")
def test_large_blocks_come_from_the_heap_once_the_thresholds_are_fixed() -> None:
    assert _probe("default") == ["None", "1"]  # glibc's own default: mmapped, unmapped on free
    assert _probe("tuned") == ["True", "0"]


@pytest.mark.skipif(not _glibc(), reason="the thresholds are glibc's")
def test_an_operators_own_malloc_tuning_is_left_alone() -> None:
    tunables = f"glibc.malloc.mmap_threshold={64 * 1024}"
    assert _probe("tuned", GLIBC_TUNABLES=tunables) == ["False", "1"]


@pytest.mark.parametrize(
    ("environ", "tuned"),
    [
        ({}, False),
        ({"MALLOC_ARENA_MAX": "2"}, False),  # another knob: ours still apply
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, False),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, True),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, True),
        ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0:glibc.malloc.trim_threshold=0"}, True),
    ],
)
def test_operator_tuning_is_recognised(environ: dict[str, str], tuned: bool) -> None:
    assert allocator.operator_tuned(environ) is tuned
    if tuned:
        assert allocator.keep_large_blocks(environ) is False


def test_every_served_process_fixes_the_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def keep_large_blocks() -> bool:
        calls.append("called")
        return True

    monkeypatch.setattr(server, "keep_large_blocks", keep_large_blocks)
    threshold = gc.get_threshold()
    try:
        server._prepare_process()  # what `serve` and each worker run before serving
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert calls == ["called"]
