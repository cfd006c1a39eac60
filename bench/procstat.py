"""Process CPU and memory, read from /proc (Linux).

CPU is utime + stime of every thread of the process, from /proc/<pid>/stat, in milliseconds
(clock-tick resolution, usually 10 ms: measured windows are long enough for that not to matter).
"""

from __future__ import annotations

import os

_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        # The command name may hold spaces and parentheses; the fields start after the last ")".
        return stat.read().rsplit(b")", 1)[1].split()


def cpu_ms(pid: int) -> float:
    fields = _stat_fields(pid)
    # Fields 14 and 15 of proc(5): utime, stime; here counted from field 3 (state) at index 0.
    return (int(fields[11]) + int(fields[12])) * _TICK_MS


def minor_faults(pid: int) -> int:
    """Field 10 of proc(5), minflt: pages the process touched for the first time (or again)."""
    return int(_stat_fields(pid)[7])


def _status_kb(pid: int, name: bytes) -> int:
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(name):
                return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    return _status_kb(pid, b"VmRSS:")


def peak_rss_kb(pid: int) -> int:
    """VmHWM: the highest RSS since start or since ``reset_peak``."""
    return _status_kb(pid, b"VmHWM:")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (proc(5), clear_refs "5"); False where not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _stat_lines() -> list[list[bytes]]:
    with open("/proc/stat", "rb") as stat:
        return [line.split() for line in stat if line.startswith(b"cpu")]


def machine_busy_ms() -> float:
    """CPU time spent by everything on the machine, all CPUs (first line of /proc/stat).

    user + nice + system + irq + softirq; guest time is already inside user. Steal is not busy
    time of this machine: it is reported on its own (``steal_ms``).
    """
    fields = [int(field) for field in _stat_lines()[0][1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) * _TICK_MS


def steal_ms() -> dict[str, float]:
    """Steal time by /proc/stat line ("cpu" for all CPUs, "cpu0", "cpu1", ...), in milliseconds.

    Steal is time a virtual CPU had work but the hypervisor ran something else: on a shared
    machine it is what stretches latency tails while every process here looks idle.
    """
    return {line[0].decode(): int(line[8]) * _TICK_MS for line in _stat_lines()}


def task_cpu_ns(pid: int) -> int:
    """CPU time of every live thread of the process, in nanoseconds (``/proc/<pid>/task/*/schedstat``,
    the scheduler's own account): for costs well under the 10 ms tick, such as one key refresh.
    A thread that ends inside a window takes its time with it, so only long-lived threads count."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as stat:
                total += int(stat.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended since listed
    return total
