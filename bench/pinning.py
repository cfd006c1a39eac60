"""Which CPU each side runs on.

With two or more CPUs the gateway gets one to itself and the load side (this process and the
fast upstream) shares another, so the gateway's figures are not mixed with the load's work and
its CPU share can reach 100 % of one core. The gateway is pinned with ``taskset -c``, this
process with ``sched_setaffinity``; children inherit nothing else from us.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Pinning:
    load_cpu: int | None
    gateway_cpu: int | None
    note: str

    def prefix(self, cpu: int | None) -> list[str]:
        return [] if cpu is None else ["taskset", "-c", str(cpu)]

    def steal_lines(self) -> dict[str, str]:
        """Which /proc/stat line holds each side's steal: its own CPU when pinned, else all CPUs."""
        if self.gateway_cpu is None or self.load_cpu is None:
            return {"machine": "cpu"}
        return {"gateway": f"cpu{self.gateway_cpu}", "load": f"cpu{self.load_cpu}"}

    def apply_to_self(self) -> None:
        if self.load_cpu is not None:
            os.sched_setaffinity(0, {self.load_cpu})


def choose(wanted: bool) -> Pinning:
    cpus = sorted(os.sched_getaffinity(0))
    if not wanted:
        return Pinning(None, None, f"not pinned (--no-pin); {len(cpus)} CPUs shared by all processes")
    if len(cpus) < 2:
        return Pinning(None, None, "not pinned: only one CPU available; all processes share it")
    if shutil.which("taskset") is None:
        return Pinning(None, None, "not pinned: taskset not found; all processes share every CPU")
    load, gateway = cpus[0], cpus[1]
    return Pinning(
        load,
        gateway,
        f"gateway pinned to CPU {gateway} (taskset -c {gateway}); load generator and fast upstream share CPU {load}",
    )
