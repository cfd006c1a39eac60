"""glibc malloc thresholds: taken in a real process, left alone where an operator set their own."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.runtime import allocator, tuning

ROOT = Path(__file__).resolve().parent.parent.parent

# In a fresh process (glibc's dynamic thresholds untouched): whether the thresholds were applied,
# how many blocks glibc mmapped for one 600 KiB bytes object (by default: 1, unmapped on free),
# and how many KiB stay at the heap's top once 3 MB of 100 KiB objects are freed (by default the
# top is trimmed back to 128 KiB).
_PROBE = """
import ctypes, sys
from gateway.runtime.allocator import keep_large_blocks

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
applied = keep_large_blocks() if sys.argv[1] == "tuned" else None
before = libc.mallinfo2().hblks
block = bytes(600 * 1024)
mapped = libc.mallinfo2().hblks - before
pieces = [bytes(100 * 1024) for _ in range(30)]
del pieces
print(applied, mapped, libc.mallinfo2().keepcost // 1024)
"""

_GLIBC = allocator.glibc()
needs_mallinfo2 = pytest.mark.skipif(
    _GLIBC is None or not hasattr(_GLIBC, "mallinfo2"), reason="the thresholds are glibc's (2.33+ to read them)"
)


def _probe(mode: str, **env: str) -> tuple[str, int, int]:
    # The test's own environment must not tune malloc: only what the probe is given.
    clean = {
        name: value for name, value in os.environ.items() if name != "GLIBC_TUNABLES" and not name.startswith("MALLOC_")
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    applied, mapped, kept_kib = done.stdout.split()
    return applied, int(mapped), int(kept_kib)


@needs_mallinfo2
def test_large_blocks_stay_in_the_heap_once_the_thresholds_are_fixed() -> None:
    applied, mapped, kept_kib = _probe("default")
    assert (applied, mapped) == ("None", 1)
    assert kept_kib < 1024
    applied, mapped, kept_kib = _probe("tuned")
    assert (applied, mapped) == ("True", 0)  # the mmap threshold: 1 MiB
    assert kept_kib > 2048  # the trim threshold: 4 MiB


@needs_mallinfo2
def test_an_operators_own_malloc_tuning_is_left_alone() -> None:
    applied, mapped, _ = _probe("tuned", GLIBC_TUNABLES=f"glibc.malloc.mmap_threshold={64 * 1024}")
    assert (applied, mapped) == ("False", 1)


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def confstr(name: str) -> str:
        raise OSError(22, "Invalid argument")  # as musl answers CS_GNU_LIBC_VERSION

    monkeypatch.setattr(os, "confstr", confstr)
    assert allocator.glibc() is None
    assert allocator.keep_large_blocks({}) is False


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

    monkeypatch.setattr(tuning, "keep_large_blocks", keep_large_blocks)
    threshold = gc.get_threshold()
    try:
        tuning.prepare_process()  # what `serve` and each worker run before serving
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert calls == ["called"]
