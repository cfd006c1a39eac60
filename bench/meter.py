"""One measured window: wall time, CPU of every process in the run, and the gateway's RSS.

CPU is read for each role (gateway, upstream, load) so a reader can tell who saturated: a role at
~100 % of one core was the bottleneck. A role may be several processes (the fast upstreams behind
a gateway fronting several): their CPU and page faults are added up. The gateway's RSS is sampled
every ``every`` seconds during the window, and its kernel high-water mark is reset at the start
where permitted.
Hypervisor steal is read for the CPUs named in ``steal`` (role -> /proc/stat line), so a run a
noisy neighbour slowed says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from bench import procstat


@dataclass(frozen=True)
class Window:
    seconds: float
    cpu_ms: dict[str, float]
    rss_before_kb: int  # the watched process; 0 when none is watched
    rss_peak_kb: int
    others_ms: float  # everything else on the machine: other processes, kernel work
    steal_ms: dict[str, float]  # by role, e.g. "gateway" -> steal on the gateway's CPU
    faults: dict[str, int]  # minor page faults by role

    def cpu_pct(self, role: str) -> float:
        """Share of one core the role used over the window."""
        return self._pct(self.cpu_ms[role])

    def others_pct(self) -> float:
        """Noise: a busy shared machine shows here (loopback networking in the kernel does too)."""
        return self._pct(max(self.others_ms, 0.0))

    def steal_pct(self) -> dict[str, float]:
        """Steal by role, as a share of one core (per CPU when pinned: of that CPU's time)."""
        return {role: self._pct(max(ms, 0.0)) for role, ms in self.steal_ms.items()}

    def _pct(self, ms: float) -> float:
        return 100 * ms / (self.seconds * 1000) if self.seconds > 0 else 0.0


class Meter:
    """``async with Meter(...) as meter:`` measures the block; ``meter.window`` holds the result."""

    def __init__(
        self,
        pids: Mapping[str, Sequence[int]],
        watch: int | None = None,
        every: float = 0.05,
        steal: Mapping[str, str] | None = None,
        *,
        precise: bool = False,
    ) -> None:
        self._pids = dict(pids)
        # The scheduler's nanosecond account of the live threads (``precise``), for windows whose
        # CPU is a few ticks; otherwise /proc/<pid>/stat, which keeps ended threads' time too.
        self._read_cpu = _task_cpu_ms if precise else _cpu_ms
        self._steal_lines = dict(steal or {})
        self._steal: dict[str, float] = {}
        self._watch = watch
        self._every = every
        self._started = 0.0
        self._cpu: dict[str, float] = {}
        self._faults: dict[str, int] = {}
        self._machine = 0.0
        self._rss_before = 0
        self._rss_peak = 0
        self._hwm_reset = False
        self._sampler: asyncio.Task[None] | None = None
        self.window: Window | None = None

    async def __aenter__(self) -> Meter:
        if self._watch is not None:
            self._hwm_reset = procstat.reset_peak(self._watch)
            self._rss_before = self._rss_peak = procstat.rss_kb(self._watch)
            self._sampler = asyncio.get_running_loop().create_task(self._sample(self._watch))
        self._cpu = {role: self._read_cpu(pids) for role, pids in self._pids.items()}
        self._faults = {role: _faults(pids) for role, pids in self._pids.items()}
        self._machine = procstat.machine_busy_ms()
        self._steal = procstat.steal_ms()
        self._started = time.perf_counter()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        seconds = time.perf_counter() - self._started
        cpu = {role: self._read_cpu(pids) - self._cpu[role] for role, pids in self._pids.items()}
        faults = {role: _faults(pids) - self._faults[role] for role, pids in self._pids.items()}
        others = procstat.machine_busy_ms() - self._machine - sum(cpu.values())
        steal_now = procstat.steal_ms()
        steal = {
            role: steal_now.get(line, 0.0) - self._steal.get(line, 0.0) for role, line in self._steal_lines.items()
        }
        if self._sampler is not None:
            # Not awaited: awaiting here could swallow a cancellation meant for the caller.
            self._sampler.cancel()
        if self._watch is not None:
            self._rss_peak = max(self._rss_peak, procstat.rss_kb(self._watch))
            if self._hwm_reset:
                self._rss_peak = max(self._rss_peak, procstat.peak_rss_kb(self._watch))
        self.window = Window(seconds, cpu, self._rss_before, self._rss_peak, others, steal, faults)

    async def _sample(self, pid: int) -> None:
        while True:
            await asyncio.sleep(self._every)
            self._rss_peak = max(self._rss_peak, procstat.rss_kb(pid))

    @property
    def result(self) -> Window:
        if self.window is None:
            raise RuntimeError("the window has not ended")
        return self.window


def _cpu_ms(pids: Sequence[int]) -> float:
    return sum(procstat.cpu_ms(pid) for pid in pids)


def _task_cpu_ms(pids: Sequence[int]) -> float:
    return sum(procstat.task_cpu_ns(pid) for pid in pids) / 1e6


def _faults(pids: Sequence[int]) -> int:
    return sum(procstat.minor_faults(pid) for pid in pids)
